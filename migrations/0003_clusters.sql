-- Clusters the gateway provisions, the instances (node slots) it asked a
-- provider for, and the single-use join tokens those instances start with.

create type cluster_state as enum ('provisioning', 'ready', 'stopping', 'terminated', 'failed');

create table cluster (
    cluster_id    uuid primary key,
    name          text not null,
    provider      text not null,
    -- The full spec, as the API shows it (instance type, region, count, ...).
    spec          jsonb not null,
    -- The profile it was made from, when a dispatch brought it up on demand.
    profile       text,
    state         cluster_state not null,
    -- Bumped by every state change; writes compare-and-set on it.
    generation    bigint not null default 0,
    -- Why it is in its state (failure message, who stopped it and why).
    state_reason  text,
    created_by    text not null,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    ready_at      timestamptz,
    stopping_at   timestamptz,
    terminated_at timestamptz
);

-- One live cluster per name; terminated and failed ones stay as history.
create unique index cluster_live_name on cluster (name) where state in ('provisioning', 'ready', 'stopping');
create index cluster_active on cluster (state) where state in ('provisioning', 'ready', 'stopping');

create type instance_state as enum ('requested', 'created', 'terminating', 'terminated');

-- One row per machine (or process, or host) asked for. The row is written
-- before the provider is called: `instance_key` is the provider's idempotency
-- token (EC2 ClientToken, GCE requestId) and the tag we find it by again.
create table cluster_instance (
    cluster_id    uuid not null references cluster (cluster_id),
    ordinal       integer not null,
    instance_key  text not null unique,
    node_name     text not null,
    state         instance_state not null default 'requested',
    -- The provider's id (EC2 instance id, GCE instance name, local pid), once known.
    provider_id   text,
    -- Single-use and short-lived: the node trades it for its own token.
    join_token    text not null unique,
    join_expires_at timestamptz not null,
    joined_at     timestamptz,
    -- The id of the node token issued at join, revoked when the instance goes.
    node_token_jti text,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    primary key (cluster_id, ordinal)
);

create index cluster_instance_open on cluster_instance (cluster_id) where state <> 'terminated';

-- Autostop reads the last activity of a cluster's dispatches.
create index dispatch_cluster_updated on dispatch (cluster, updated_at desc);
