-- Remote objects (the API calls them instances): a class constructed once in
-- a worker of one node, whose methods are then called many times, from many
-- clients at once. (`cluster_instance` is something else: a cluster's machines.)
--
-- Invariants kept here, by constraints and triggers, so no writer can forget them:
-- - At most one live (not deleted) object per (project, name).
-- - The constructor is a dispatch with `object_id` set and `method` null,
--   placed on a node slot like any function call. The object follows it
--   in the same statement as the dispatch's own change: `starting` until it
--   ends, then `ready` (on its node) if it succeeded, `lost` if it failed
--   with `node_lost`, `failed` otherwise (the failure is copied).
-- - A node slot holds a running dispatch or a ready object, never both:
--   a constructor that succeeds hands its slot to its object, and an
--   object that leaves `ready` frees it.
-- - A method call is a dispatch with `object_id` and `method` set. It runs
--   on its object's node but takes one of the object's own slots (one per
--   unit of `max_concurrency`), claimed like node slots, never a node slot;
--   the same trigger frees it when the call stops running.
-- - A node that is lost takes its ready objects with it (`lost`).

create type object_state as enum ('starting', 'ready', 'failed', 'lost', 'deleted');

create table object (
    object_id         uuid primary key,
    project           text not null,
    name              text not null,
    -- `module:Qualname` of the class.
    class_ref         text not null,
    bundle            text,
    requirements      jsonb not null default '[]',
    init_args         jsonb not null default '[]',
    init_kwargs       jsonb not null default '{}',
    cluster           text not null,
    cluster_project   text not null,
    max_concurrency   integer not null check (max_concurrency between 1 and 256),
    idle_stop_minutes double precision check (idle_stop_minutes > 0),
    restart           text not null default 'never' check (restart in ('never', 'on_lost')),
    state             object_state not null default 'starting',
    state_reason      text,
    -- The constructor's failure, once `failed`.
    failure           jsonb,
    -- The node hosting it, once its constructor was placed.
    node_id           uuid references node (node_id),
    -- The dispatch running (or that ran) the current construction.
    constructor_id    uuid,
    restarts          integer not null default 0,
    -- Bumped by every state change; writes compare-and-set on it.
    generation        bigint not null default 1,
    created_by        text not null,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    ready_at          timestamptz
);

create unique index object_live_name on object (project, name) where state <> 'deleted';
create index object_on_node on object (node_id) where state in ('starting', 'ready');

-- What happened to an object, for people: construction, loss, restarts,
-- abandoned calls, idle stops, deletion.
create table object_event (
    event_id    bigserial primary key,
    object_id   uuid not null references object (object_id),
    kind        text not null,
    message     text not null,
    created_at  timestamptz not null default now()
);
create index object_event_of on object_event (object_id, event_id);

alter table dispatch
    add column object_id uuid references object (object_id),
    add column method      text,
    add constraint dispatch_method_needs_object check (method is null or object_id is not null);
create index dispatch_of_object on dispatch (object_id, dispatch_id) where object_id is not null;
create index dispatch_object_queued on dispatch (object_id, dispatch_id)
    where state = 'queued' and method is not null;

-- Node slots may hold a ready object instead of a dispatch.
alter table node_slot
    add column object_id uuid,
    add constraint node_slot_one_holder check (dispatch_id is null or object_id is null);
create unique index node_slot_object on node_slot (object_id) where object_id is not null;
drop index node_slot_free;
create index node_slot_free on node_slot (slot, node_id) where dispatch_id is null and object_id is null;

create or replace function node_slot_sync() returns trigger language plpgsql as $$
begin
    insert into node_slot (node_id, slot)
    select new.node_id, s from generate_series(0, new.max_concurrent - 1) s
    on conflict do nothing;
    -- Free slots beyond the limit go; held ones go when their holder leaves.
    delete from node_slot
    where node_id = new.node_id and slot >= new.max_concurrent and dispatch_id is null and object_id is null;
    return null;
end;
$$;

-- An object's own slots, one per unit of its `max_concurrency`.
create table object_slot (
    object_id   uuid not null references object (object_id),
    slot        integer not null,
    -- The method call running in this slot; null when free.
    dispatch_id uuid,
    primary key (object_id, slot)
);
create unique index object_slot_dispatch on object_slot (dispatch_id) where dispatch_id is not null;

-- The object follows its constructor. Named to fire before
-- `node_slot_release` (triggers of one event fire in name order), which
-- reads the state written here.
create function dispatch_constructor_ended() returns trigger language plpgsql as $$
begin
    update object i set
        state = case
            when new.state = 'succeeded' then 'ready'
            when new.failure ->> 'code' = 'node_lost' then 'lost'
            else 'failed'
        end::object_state,
        state_reason = case
            when new.state = 'succeeded' then null
            when new.state = 'cancelled' then 'its constructor was cancelled' || coalesce(': ' || new.cancel_reason, '')
            else 'its constructor ' || replace(new.state::text, '_', ' ') || coalesce(': ' || (new.failure ->> 'message'), '')
        end,
        failure = case when new.state = 'succeeded' then null else new.failure end,
        node_id = coalesce(new.node_id, i.node_id),
        constructor_id = new.dispatch_id,
        ready_at = case when new.state = 'succeeded' then now() else i.ready_at end,
        generation = i.generation + 1,
        updated_at = now()
    -- Any constructor of a starting object is its current one: earlier
    -- ones ended before it left `starting` the last time.
    where i.object_id = new.object_id and i.state = 'starting';
    if found then
        insert into object_event (object_id, kind, message)
        values (new.object_id, case when new.state = 'succeeded' then 'ready' else 'constructor_ended' end,
                case when new.state = 'succeeded' then 'constructed on node ' || coalesce((select name from node where node_id = new.node_id), '?')
                     else 'the constructor ended ' || new.state::text || coalesce(': ' || (new.failure ->> 'message'), '') end);
    end if;
    return null;
end;
$$;

create trigger dispatch_constructor_ended
    after update of state on dispatch
    for each row
    when (new.object_id is not null and new.method is null and old.state is distinct from new.state
          and new.state in ('succeeded', 'failed', 'cancelled', 'timed_out'))
    execute function dispatch_constructor_ended();

create or replace function node_slot_release() returns trigger language plpgsql as $$
begin
    -- A constructor that made its object ready hands its slot over.
    update node_slot set dispatch_id = null,
        object_id = (select i.object_id from object i
                       where new.state = 'succeeded' and new.method is null and i.object_id = new.object_id
                         and i.constructor_id = new.dispatch_id and i.state = 'ready')
    where dispatch_id = old.dispatch_id;
    if old.method is not null then
        update object_slot set dispatch_id = null where dispatch_id = old.dispatch_id;
    end if;
    return null;
end;
$$;

-- A ready object gets its own slots; one that leaves `ready` frees its node slot.
create function object_slots() returns trigger language plpgsql as $$
begin
    if new.state = 'ready' then
        insert into object_slot (object_id, slot)
        select new.object_id, s from generate_series(0, new.max_concurrency - 1) s
        on conflict do nothing;
    end if;
    if old.state = 'ready' and new.state <> 'ready' then
        update node_slot set object_id = null where object_id = old.object_id;
    end if;
    return null;
end;
$$;

create trigger object_slots
    after update of state on object
    for each row
    when (old.state is distinct from new.state)
    execute function object_slots();

-- A lost node loses its objects.
create function object_node_lost() returns trigger language plpgsql as $$
begin
    with lost as (
        update object set state = 'lost', state_reason = 'its node ' || new.name || ' was lost',
                            generation = generation + 1, updated_at = now()
        where node_id = new.node_id and state = 'ready'
        returning object_id
    )
    insert into object_event (object_id, kind, message)
    select object_id, 'lost', 'its node ' || new.name || ' was lost' from lost;
    return null;
end;
$$;

create trigger object_node_lost
    after update of state on node
    for each row
    when (new.state = 'lost' and old.state is distinct from new.state)
    execute function object_node_lost();
