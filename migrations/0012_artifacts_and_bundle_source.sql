-- Artifacts: the files a call kept (what it wrote under $RH_OUTPUTS), and
-- where a bundle's code came from.
--
-- Invariants:
-- - An artifact's bytes live in the artifact store under `blobs/<sha256>`,
--   written completely before its row is inserted: a row never names bytes
--   that are missing or partial. Blobs are content-addressed, so two calls
--   keeping the same file share one blob.
-- - Only the node a dispatch runs on adds its artifacts, while the dispatch
--   is running; a path is kept once per dispatch (a node retrying an upload
--   of the same bytes changes nothing; other bytes under a kept path are
--   refused).
-- - Paths are relative, `/`-separated, with no empty, `.` or `..` parts
--   (checked by the gateway before anything is stored).

create table dispatch_artifact (
    dispatch_id  uuid not null references dispatch (dispatch_id),
    path         text not null,
    sha256       text not null,
    size_bytes   bigint not null check (size_bytes >= 0),
    content_type text not null,
    created_at   timestamptz not null default now(),
    primary key (dispatch_id, path)
);

-- Where the project's copy of a bundle was packed from, as the packing tool
-- said on upload (the latest upload of the same bytes wins): `git_commit`,
-- `git_dirty` and `packer`. Run records copy it when a call starts.
alter table bundle_project add column source jsonb;
