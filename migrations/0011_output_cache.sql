-- Output caching: a dispatch created with a cache key returns the result of
-- an earlier succeeded dispatch of the project with the same key, without
-- running.
--
-- Invariants:
-- - `cache_key` is set only on dispatches that asked for caching; only
--   succeeded ones answer others (failed, cancelled and timed-out never do).
-- - `cached_from` names the dispatch whose result answered this one, or,
--   while this one is queued, the identical call it waits for (a follower).
--   A follower is never placed: it ends with its leader's result, or, if the
--   leader did not succeed, one follower becomes the leader and runs.
-- - One leader per key at a time: creates of one key take an advisory lock
--   (per project and key) around "look for a hit, a leader, or insert".

alter table dispatch
    add column cache_key   text,
    add column cached_from uuid;

create index dispatch_cache_hit on dispatch (project, cache_key, finished_at desc)
    where cache_key is not null and state = 'succeeded';
create index dispatch_cache_leader on dispatch (project, cache_key)
    where cache_key is not null and cached_from is null and state in ('queued', 'running', 'cancelling');
create index dispatch_cache_followers on dispatch (cached_from)
    where cached_from is not null and state = 'queued';
