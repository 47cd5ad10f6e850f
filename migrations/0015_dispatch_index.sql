-- The indexes a state change rewrites move off the dispatch row, onto a
-- narrow row of their own, so a state change is a HOT update of the wide row.
--
-- Postgres rewrites a row as a HOT update (no new entry in any of the
-- table's indexes) only when no column any index names, in its key or its
-- predicate, changed. Every state change changes `state` and `updated_at`,
-- and most change `node_id` or `finished_at`, which nine indexes named; so
-- every report, placement and ack added an entry to each of the dispatch
-- table's indexes, including the primary key, project, function, idempotency
-- and object ones whose columns never change. Measured before building
-- (pgbench, 700,000 rows, batches of 64 place/ack/report): 8.0-8.3 ms a batch
-- as it was, 5.8-6.2 ms with the state-bearing indexes on a narrow table the
-- same statements write; kept by a row trigger instead, no gain.
--
-- Invariants:
-- - Every dispatch has exactly one `dispatch_index` row, inserted by the
--   statement that inserts the dispatch.
-- - Its `state`, `node_id`, `cached_from`, `updated_at` and `finished_at`
--   equal the dispatch row's at the end of every statement: a statement that
--   changes one of them on `dispatch` writes `dispatch_index` too. Its other
--   columns never change (the dispatch's never do).
-- - `dispatch` keeps every column and stays what reads return; a read that
--   needs a state-bearing index finds ids here, then reads `dispatch`.
-- - Lock order: a writer locks the dispatch row before its index row, and
--   nothing locks an index row on its own (`for update of d` on the dispatch
--   side of a join), so the two rows never deadlock.
-- The API tests install a deferred check of the second invariant at every
-- commit (gateway/tests/api/helpers.rs).

create table dispatch_index (
    dispatch_id     uuid primary key references dispatch (dispatch_id),
    project         text not null,
    cluster_project text not null,
    cluster         text not null,
    object_id       uuid,
    -- A method call of `object_id` (else a function call or its constructor).
    is_method       boolean not null,
    cache_key       text,
    state           dispatch_state not null,
    node_id         uuid,
    cached_from     uuid,
    updated_at      timestamptz not null,
    finished_at     timestamptz
);

insert into dispatch_index (dispatch_id, project, cluster_project, cluster, object_id, is_method, cache_key,
                            state, node_id, cached_from, updated_at, finished_at)
select dispatch_id, project, cluster_project, cluster, object_id, method is not null, cache_key,
       state, node_id, cached_from, updated_at, finished_at
from dispatch;

drop index dispatch_project_state;
drop index dispatch_queued;
drop index dispatch_on_node;
drop index dispatch_cancelling;
drop index dispatch_cluster_updated;
drop index dispatch_object_queued;
drop index dispatch_cache_hit;
drop index dispatch_cache_leader;
drop index dispatch_cache_followers;

create index dispatch_index_project_state on dispatch_index (project, state, dispatch_id desc);
create index dispatch_index_queued on dispatch_index (cluster_project, cluster, dispatch_id) where state = 'queued';
create index dispatch_index_on_node on dispatch_index (node_id) where state in ('running', 'cancelling');
create index dispatch_index_cancelling on dispatch_index (updated_at) where state = 'cancelling';
create index dispatch_index_cluster_updated on dispatch_index (cluster_project, cluster, updated_at desc);
create index dispatch_index_object_queued on dispatch_index (object_id, dispatch_id)
    where state = 'queued' and is_method;
create index dispatch_index_cache_hit on dispatch_index (project, cache_key, finished_at desc)
    where cache_key is not null and state = 'succeeded';
create index dispatch_index_cache_leader on dispatch_index (project, cache_key)
    where cache_key is not null and cached_from is null and state in ('queued', 'running', 'cancelling');
create index dispatch_index_cache_followers on dispatch_index (cached_from)
    where cached_from is not null and state = 'queued';

-- Room on each page for the new version of a row, which a HOT update must
-- put on the same page (applies to pages written from now on).
alter table dispatch set (fillfactor = 85);

create or replace function node_running(node uuid) returns bigint language sql stable as $$
    select count(*) from dispatch_index where node_id = node and state in ('running', 'cancelling')
$$;
