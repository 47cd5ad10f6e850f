-- Node slots: one row per unit of a node's concurrency, holding the dispatch
-- that occupies it.
--
-- Placement claims a free slot with `FOR UPDATE SKIP LOCKED`, so concurrent
-- creates take different slots and never wait on each other. (Counting a
-- node's running dispatches under a lock on its `node` row made every
-- placement wait for the previous one's commit to reach the disk.)
--
-- The invariant "a slot holds a dispatch exactly while it is running or
-- cancelling on that node" is kept here, by triggers, so no writer can
-- forget it: slots follow `node.max_concurrent`, and a dispatch leaving
-- running/cancelling frees its slot in the same statement.

create table node_slot (
    node_id     uuid not null references node (node_id),
    slot        integer not null,
    -- The dispatch running in this slot; null when free.
    dispatch_id uuid,
    primary key (node_id, slot)
);

create unique index node_slot_dispatch on node_slot (dispatch_id) where dispatch_id is not null;
create index node_slot_free on node_slot (slot, node_id) where dispatch_id is null;

create function node_slot_sync() returns trigger language plpgsql as $$
begin
    insert into node_slot (node_id, slot)
    select new.node_id, s from generate_series(0, new.max_concurrent - 1) s
    on conflict do nothing;
    -- Free slots beyond the limit go; occupied ones go when their dispatch ends.
    delete from node_slot where node_id = new.node_id and slot >= new.max_concurrent and dispatch_id is null;
    return null;
end;
$$;

create trigger node_slot_sync
    after insert or update of max_concurrent on node
    for each row execute function node_slot_sync();

create function node_slot_release() returns trigger language plpgsql as $$
begin
    update node_slot set dispatch_id = null where dispatch_id = old.dispatch_id;
    return null;
end;
$$;

create trigger node_slot_release
    after update of state on dispatch
    for each row
    when (old.state in ('running', 'cancelling') and new.state not in ('running', 'cancelling'))
    execute function node_slot_release();

-- Existing nodes get their slots, and running dispatches keep theirs.
insert into node_slot (node_id, slot)
select n.node_id, s from node n, generate_series(0, n.max_concurrent - 1) s;

with occupied as (
    select node_id, dispatch_id, row_number() over (partition by node_id order by dispatch_id) - 1 as slot
    from dispatch
    where state in ('running', 'cancelling') and node_id is not null
)
insert into node_slot (node_id, slot, dispatch_id)
select node_id, slot, dispatch_id from occupied
on conflict (node_id, slot) do update set dispatch_id = excluded.dispatch_id;

