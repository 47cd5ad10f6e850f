-- Projects own their clusters and nodes; a node's credential names the node;
-- a call that started is never run again because its outcome was lost; and
-- any output a node sends can be stored.

-- A cluster belongs to the project that made it, and names are unique per
-- project. `shared_with` lists other projects that may dispatch to it (as
-- `owner/name`) and do nothing else with it.
alter table cluster
    add column project     text not null default 'default',
    add column shared_with text[] not null default '{}';
alter table cluster alter column project drop default;
drop index cluster_live_name;
create unique index cluster_live_name on cluster (project, name) where state in ('provisioning', 'ready', 'stopping');

-- A node belongs to its cluster's project; its credential names (project,
-- cluster, name), so the row a credential may act as is exactly one.
alter table node add column project text not null default 'default';
alter table node alter column project drop default;
alter table node drop constraint node_cluster_name;
alter table node add constraint node_project_cluster_name unique (project, cluster, name);
drop index node_cluster_ready;
create index node_cluster_ready on node (project, cluster) where state = 'ready';

-- Forwards to a node that failed in a row, and until when placement skips it
-- (backing off doubles per failure; past a limit the node is `unreachable`).
alter table node
    add column forward_failures  integer not null default 0,
    add column unreachable_until timestamptz;

-- The project owning the cluster a dispatch runs on: its own, or the project
-- that shared the cluster with it. Placement matches nodes on
-- (cluster_project, cluster).
alter table dispatch add column cluster_project text;
update dispatch set cluster_project = project;
alter table dispatch alter column cluster_project set not null;
drop index dispatch_queued;
create index dispatch_queued on dispatch (cluster_project, cluster, dispatch_id) where state = 'queued';
drop index dispatch_cluster_updated;
create index dispatch_cluster_updated on dispatch (cluster_project, cluster, updated_at desc);

-- `acked_at`: when the node was known to have the call (it accepted the
-- forward, or a heartbeat listed it). The invariant: a dispatch with
-- `acked_at` set is never requeued, since its code may have run; if its node
-- stops listing it without an outcome, it fails (`outcome_lost`).
-- `requeues`: how often it went back to the queue; past a small limit it
-- fails (`placement_failed`) instead, so no loop can grow its event log.
alter table dispatch
    add column acked_at timestamptz,
    add column requeues integer not null default 0;

-- `json`, not `jsonb`: keeps the text as sent, so a string holding a NUL
-- (`\u0000`, which `jsonb` cannot hold) is stored and returned unchanged.
alter table dispatch
    alter column result  type json using result::json,
    alter column failure type json using failure::json;

-- Text holding a NUL cannot be stored as `text`; such an entry is stored
-- escaped (`\` as `\\`, NUL as `\0`) with `escaped` set, and unescaped on read.
alter table dispatch_log add column escaped boolean not null default false;

-- Which projects hold a bundle: the ones that uploaded it (or referenced it
-- before this table existed). A project can download, dispatch or register
-- only bundles it holds; uploading the same bytes again adds the project.
create table bundle_project (
    project    text not null,
    sha256     text not null references bundle (sha256),
    created_at timestamptz not null default now(),
    primary key (project, sha256)
);

insert into bundle_project (project, sha256)
select distinct project, bundle from dispatch where bundle is not null
union
select distinct project, bundle from function where bundle is not null
on conflict do nothing;

-- One row naming this installation (this database). Replicas sharing the
-- database share the id, and with it the folder the `local` provider keeps
-- its processes in, so they never mistake each other's nodes for vanished ones.
create table installation (
    id         uuid primary key,
    singleton  boolean not null default true unique check (singleton),
    created_at timestamptz not null default now()
);

insert into installation (id) values (gen_random_uuid());
