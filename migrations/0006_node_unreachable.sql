-- A node whose address refuses connections while it still heartbeats (a
-- wrong --advertise, a firewall) is `unreachable`: placement skips it until
-- it registers again. Its own migration, because a new enum value cannot be
-- used in the transaction that adds it.

alter type node_state add value 'unreachable';
