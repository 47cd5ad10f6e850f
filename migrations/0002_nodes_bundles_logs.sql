-- Node daemons, code bundles, registered functions, call logs, and the
-- columns a dispatch needs to be placed on a node and reproduced later.

create type node_state as enum ('ready', 'lost');

create table node (
    node_id           uuid primary key,
    name              text not null,
    cluster           text not null,
    -- Where the gateway reaches the node's API.
    address           text not null,
    -- The key the gateway signs its requests to this node with.
    api_secret        text not null,
    state             node_state not null default 'ready',
    max_concurrent    integer not null,
    resources         jsonb not null default '{}',
    labels            jsonb not null default '{}',
    registered_at     timestamptz not null default now(),
    last_heartbeat_at timestamptz not null default now(),
    lost_at           timestamptz,
    constraint node_cluster_name unique (cluster, name)
);

create index node_cluster_ready on node (cluster) where state = 'ready';


alter table dispatch
    add column bundle           text,
    add column requirements     jsonb not null default '[]',
    add column function_name    text,
    add column node_id          uuid references node (node_id),
    add column log_bytes        bigint not null default 0,
    add column log_truncated    boolean not null default false;

-- How many dispatches occupy a slot on a node now.
create function node_running(node uuid) returns bigint language sql stable as $$
    select count(*) from dispatch where node_id = node and state in ('running', 'cancelling')
$$;

create index dispatch_queued on dispatch (cluster, dispatch_id) where state = 'queued';
create index dispatch_on_node on dispatch (node_id) where state in ('running', 'cancelling');
create index dispatch_cancelling on dispatch (updated_at) where state = 'cancelling';

create table bundle (
    sha256     text primary key,
    size_bytes bigint not null,
    -- Size once unpacked, checked at upload against the unpack limit.
    unpacked_bytes bigint not null,
    files      integer not null,
    data       bytea not null,
    created_at timestamptz not null default now()
);

create table function (
    project      text not null,
    name         text not null,
    function_ref text not null,
    bundle       text references bundle (sha256),
    requirements jsonb not null default '[]',
    cluster      text,
    created_by   text not null,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    primary key (project, name)
);

create type log_stream as enum ('stdout', 'stderr', 'system');

create table dispatch_log (
    dispatch_id uuid not null references dispatch (dispatch_id),
    seq         bigint not null,
    stream      log_stream not null,
    text        text not null,
    created_at  timestamptz not null default now(),
    primary key (dispatch_id, seq)
);
