-- Dispatches, their append-only event log, and revoked tokens.
-- Never edit a migration that has been applied; add a new one.

create type dispatch_state as enum (
    'queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled', 'timed_out'
);

create table dispatch (
    dispatch_id         uuid primary key,
    project             text not null,
    function_ref        text not null,
    args                jsonb not null,
    kwargs              jsonb not null,
    cluster             text not null,
    state               dispatch_state not null default 'queued',
    generation          bigint not null default 1,
    idempotency_key     text,
    -- sha256 of the canonical request body, to tell a retry from a conflicting reuse of a key
    request_hash        text not null,
    requester           text not null,
    labels              jsonb not null default '{}',
    timeout_s           integer,
    result              jsonb,
    failure             jsonb,
    cancelled_by        text,
    cancel_reason       text,
    created_at          timestamptz not null default now(),
    started_at          timestamptz,
    cancel_requested_at timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz not null default now(),
    constraint dispatch_idempotency_key unique (project, idempotency_key)
);

create index dispatch_project_id on dispatch (project, dispatch_id desc);
create index dispatch_project_state on dispatch (project, state, dispatch_id desc);
create index dispatch_labels on dispatch using gin (labels jsonb_path_ops);

-- Gateways publish "this dispatch changed" hints on the `dispatch_state` and
-- `dispatch_log` channels after their writes commit, in batches. (A NOTIFY
-- inside the writing transaction would hold a global lock across its commit
-- flush and serialise every commit.)
create function notify_many(channel text, payloads text[]) returns integer language plpgsql as $$
begin
    perform pg_notify(channel, payload) from unnest(payloads) as payload;
    return cardinality(payloads);
end;
$$;

create table dispatch_event (
    event_id    bigserial primary key,
    dispatch_id uuid not null references dispatch (dispatch_id),
    from_state  dispatch_state,
    to_state    dispatch_state not null,
    generation  bigint not null,
    actor       text not null,
    reason      text,
    created_at  timestamptz not null default now()
);

create index dispatch_event_dispatch on dispatch_event (dispatch_id, event_id);

create function dispatch_event_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'dispatch_event is append-only';
end;
$$;

create trigger dispatch_event_append_only
    before update or delete on dispatch_event
    for each row execute function dispatch_event_append_only();

create table revoked_token (
    jti        text primary key,
    reason     text,
    revoked_at timestamptz not null default now()
);

create function revoked_token_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('token_revoked', new.jti);
    return null;
end;
$$;

create trigger revoked_token_notify
    after insert on revoked_token
    for each row execute function revoked_token_notify();
