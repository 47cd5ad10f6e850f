-- Node slots carry their node's cluster, so placement finds a cluster's free
-- slots in an index of that cluster's slots alone.
--
-- Placement took free slots in (slot, node) order from an index over every
-- node's free slots, keeping those of the wanted cluster: each placing
-- statement stepped over the free slots of every other cluster, and of nodes
-- long lost, so its cost grew with the installation, not with what it placed.
--
-- Invariant: a slot's (project, cluster) is its node's. A node's cluster never
-- changes (a node is named within its cluster), and slots are only ever made
-- by `node_slot_sync` from the node row.

alter table node_slot add column project text, add column cluster text;

update node_slot s set project = n.project, cluster = n.cluster from node n where n.node_id = s.node_id;

alter table node_slot alter column project set not null, alter column cluster set not null;

drop index node_slot_free;
create index node_slot_free on node_slot (project, cluster, slot, node_id)
    where dispatch_id is null and object_id is null;

create or replace function node_slot_sync() returns trigger language plpgsql as $$
begin
    insert into node_slot (node_id, slot, project, cluster)
    select new.node_id, s, new.project, new.cluster from generate_series(0, new.max_concurrent - 1) s
    on conflict do nothing;
    -- Free slots beyond the limit go; held ones go when their holder leaves.
    delete from node_slot
    where node_id = new.node_id and slot >= new.max_concurrent and dispatch_id is null and object_id is null;
    return null;
end;
$$;
