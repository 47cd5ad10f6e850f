-- One row per label of a dispatch. Listing "the newest dispatches with label
-- k=v" becomes an ordered walk of this table's primary key, which costs the
-- same for a label on every row as for one on a handful. (A GIN index on the
-- labels column cannot return rows in id order, and the planner cannot tell a
-- rare label from a common one: 190 ms per page at 1M rows.)
create table dispatch_label (
    project     text not null,
    key         text not null,
    value       text not null,
    dispatch_id uuid not null references dispatch (dispatch_id),
    primary key (project, key, value, dispatch_id)
);

insert into dispatch_label (project, key, value, dispatch_id)
select d.project, l.key, l.value, d.dispatch_id
from dispatch d, jsonb_each_text(d.labels) l;

drop index dispatch_labels;
