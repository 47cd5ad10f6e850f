-- Run records: what a call ran with, written once when it starts on its node.
--
-- Invariants:
-- - At most one record per dispatch, never rewritten: the first write wins
--   (`on conflict do nothing`), so a node re-sending it changes nothing.
-- - It holds everything needed to run the call again (code, arguments,
--   resolved packages, interpreter, place) by value, so it outlives the node,
--   its environment folder and the cluster. The state and timings shown with
--   it are read live from the dispatch.

create table dispatch_record (
    dispatch_id uuid primary key references dispatch (dispatch_id),
    record      jsonb not null,
    created_at  timestamptz not null default now()
);
