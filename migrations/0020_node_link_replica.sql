-- Which gateway replica holds each node's link, so a replica that places a
-- call (or a cancel) on a node linked to another replica can send it through
-- that replica instead of over HTTP to the node's address, which a node
-- behind NAT or a firewall does not offer to every replica.
--
-- Invariants:
-- - Written by the replica that opens or closes the link: set on open, and
--   cleared on close only if it still names that replica (a newer link on
--   another replica may have replaced it already).
-- - A routing hint, never the source of truth about a call. It can be stale
--   for the seconds between a replica's crash and its nodes linking again
--   (each new link overwrites it). A call sent to a replica that no longer
--   holds the link is sent by it over HTTP as before; a call whose relay
--   reaches no replica is one its node never lists, and the heartbeat repair
--   requeues it after `nodes.unacknowledged_requeue_s`, as for any call that
--   never reached its node. A cancel is re-sent by the cancel repair.
-- - Null when no replica holds a link to the node (a node running without
--   its link, or between links): calls then go over HTTP, as before.
alter table node add column link_replica uuid;

comment on column node.link_replica is
    'The gateway replica holding this node''s link (a routing hint; null: none, calls go over HTTP).';
