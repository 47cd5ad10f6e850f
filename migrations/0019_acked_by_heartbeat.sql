-- `acked_at` is now written by heartbeats only, once per call that is still
-- running when its node next heartbeats; an accepted forward writes nothing.
--
-- Before, every forward the node accepted set it, an update of the dispatch
-- row on every call (with its WAL, and a row lock a report could queue
-- behind) that only the heartbeat repair reads, and reads only for a call
-- its node no longer lists.
--
-- Invariant (the same one, by other means): a call whose code may have run
-- is never requeued. A node lists every call it has in each heartbeat until
-- the gateway has stored its outcome (it retries a report until delivered,
-- and one the gateway refuses is followed by a failure it takes), so a call
-- the node had is either listed, or ended, or (if a heartbeat listed it
-- before) `outcome_lost` when it stops being listed. An unlisted call no
-- heartbeat ever listed never reached the node, and is requeued after
-- `nodes.unacknowledged_requeue_s`. A restarted node re-registers, and a
-- silent one is lost: both fail what they do not list, whatever `acked_at` says.
comment on column dispatch.acked_at is
    'When a heartbeat of its node first listed the call: set, it is never requeued (outcome_lost if no longer listed).';
