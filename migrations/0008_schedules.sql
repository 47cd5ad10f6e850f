-- Cron schedules: a dispatch template fired on a cron expression.
--
-- Invariants:
-- - A fire is a dispatch whose idempotency key is derived from (schedule_id,
--   the scheduled instant), so any number of replicas racing to fire the
--   same instant record one dispatch.
-- - One replica at a time works on a schedule: the firer claims a due row
--   with `FOR UPDATE SKIP LOCKED` and moves `next_fire_at` in the same
--   transaction, so others skip it and never see an instant twice.
-- - `next_fire_at` is null exactly when nothing is left to fire (past
--   `end_at`); a paused schedule keeps it but is not due.

create table schedule (
    schedule_id    uuid primary key,
    project        text not null,
    name           text not null,
    cron           text not null,
    timezone       text not null,
    -- A CreateDispatch, as the client sent it (never with an idempotency key).
    template       jsonb not null,
    overlap        text not null check (overlap in ('allow', 'skip', 'cancel_previous', 'queue')),
    catchup        text not null check (catchup in ('none', 'latest', 'all')),
    max_catchup    integer not null check (max_catchup between 1 and 1000),
    paused         boolean not null default false,
    start_at       timestamptz,
    end_at         timestamptz,
    next_fire_at   timestamptz,
    last_fired_for timestamptz,
    created_by     text not null,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    unique (project, name),
    check (start_at is null or end_at is null or end_at > start_at)
);

create index schedule_due on schedule (next_fire_at) where not paused and next_fire_at is not null;
