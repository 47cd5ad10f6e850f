-- The dashboard under /ui: one-time login links, browser sessions, and what
-- its pages filter and chart by.
--
-- Invariants:
-- - Neither table holds a usable secret: a link's code and a session's
--   cookie are random 32-byte values the gateway hands out once, and only
--   their SHA-256 is stored. Reading this table does not let anyone sign in.
-- - A login link works once: it is consumed by one `UPDATE ... WHERE
--   used_at IS NULL AND expires_at > now()`, so two replicas (or two tabs)
--   racing on the same link cannot both win. It expires 5 minutes after it
--   is made.
-- - A session carries exactly the project, subject and scopes of the token
--   that created it (pasted, or behind a login link), and that token's
--   `jti`: revoking the token ends its sessions, because every request
--   checks the jti against the revocation list. A session never outlives
--   its token.

create table ui_login_link (
    code_sha256 bytea primary key,
    project     text not null,
    sub         text not null,
    scopes      text[] not null,
    token_jti   text not null,
    -- Sessions made from this link end here (the token's own expiry).
    token_exp   timestamptz not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    used_at     timestamptz
);

create index ui_login_link_expires on ui_login_link (expires_at);

create table ui_session (
    session_sha256 bytea primary key,
    project        text not null,
    sub            text not null,
    scopes         text[] not null,
    token_jti      text not null,
    -- Sent in every state-changing form; compared in constant time.
    csrf_token     text not null,
    created_at     timestamptz not null default now(),
    expires_at     timestamptz not null
);

create index ui_session_expires on ui_session (expires_at);

-- The runs page filters by function (the registered name, else the entry
-- point) newest first, and the per-function charts read one function's
-- recent dispatches. The function never changes after insert, so this index
-- does not stop state changes from being HOT updates.
create index dispatch_project_function
    on dispatch (project, (coalesce(function_name, function_ref)), dispatch_id desc);

-- How many warm Python workers a node holds, from its last heartbeat (null
-- until a node that reports it heartbeats).
alter table node add column warm_workers integer check (warm_workers >= 0);
