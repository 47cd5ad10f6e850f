-- Run environments: the part of a run record that every call of one
-- environment shares (interpreter, platform, resolved packages, the names of
-- the variables its calls see), stored once and named by its content instead
-- of copied into each call's record (~4 KB of JSON a call with a bare
-- interpreter, more with a requirement set).
--
-- Invariants:
-- - `digest` is the sha256 (hex) of `info` as the gateway serialized it; the
--   gateway computes it itself from what a node sent, so a node cannot name
--   another environment's row. A row is never rewritten (`on conflict do
--   nothing`) nor deleted while a record names it.
-- - A row says nothing of who ran what, so rows are shared across projects;
--   it is read only through a record its reader may see.
-- - A record with `environment` set holds only what is not on its dispatch
--   (where the call ran, the bundle's source at the time, when it was
--   recorded): the dispatch's function, arguments and requirements never
--   change, so they are read from the dispatch. Records written before this
--   migration have `environment` null and hold everything by value.

create table run_environment (
    digest     text primary key,
    info       jsonb not null,
    created_at timestamptz not null default now()
);

alter table dispatch_record add column environment text references run_environment (digest);
