//! Node rows: registration, heartbeats and loss.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

/// Whether a node is reachable, as stored in the `node_state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "node_state", rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    Lost,
    /// Heartbeats, but its address refused the gateway's forwards too often.
    Unreachable,
}

/// One row of `node`, with the number of dispatches running on it.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node_id: Uuid,
    /// The project owning its cluster.
    pub project: String,
    pub name: String,
    pub cluster: String,
    pub address: String,
    pub api_secret: String,
    pub state: NodeState,
    pub max_concurrent: i32,
    pub resources: Value,
    pub labels: Value,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub running: i64,
    /// Warm Python workers at the last heartbeat that said.
    pub warm_workers: Option<i32>,
}

/// A node as its heartbeat's reconcile sees it ([`DataStore::node_heartbeat_view`]).
#[derive(Debug, Clone)]
pub struct HeartbeatView {
    pub node: NodeRow,
    /// The dispatches the gateway believes run on it (`running` or `cancelling`).
    pub active: Vec<ActiveOnNode>,
    /// Whether the gateway believes a remote object lives on it.
    pub has_objects: bool,
}

/// A dispatch placed on a node: what the heartbeat's repair rules read.
#[derive(Debug, Clone, Deserialize)]
pub struct ActiveOnNode {
    pub dispatch_id: Uuid,
    pub cancelling: bool,
    pub acked_at: Option<DateTime<Utc>>,
    /// When it started running there (or last changed, if not yet).
    pub placed_at: DateTime<Utc>,
    pub requeues: i32,
}

/// Where and how the gateway reaches a node: what forwarding a call needs.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    pub node_id: Uuid,
    pub name: String,
    pub address: String,
    /// The key the gateway signs its requests to this node with.
    pub api_secret: String,
    /// Forwards to it failed lately (as placement read it): the next one that
    /// gets through clears that ([`DataStore::node_reached`]).
    pub failing: bool,
    /// The replica holding its link, as the statement that placed the call
    /// read it (`node.link_replica`; `None`: none, or not read).
    pub link_replica: Option<Uuid>,
}

impl From<&NodeRow> for NodeEndpoint {
    fn from(row: &NodeRow) -> Self {
        NodeEndpoint {
            node_id: row.node_id,
            name: row.name.clone(),
            address: row.address.clone(),
            api_secret: row.api_secret.clone(),
            // Read by placement's forwards only; cancels and stops need no reset.
            failing: false,
            // Those that route by it read it themselves.
            link_replica: None,
        }
    }
}

/// A node's identity: its cluster (within a project) and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeKey {
    pub cluster: super::ClusterKey,
    pub name: String,
}

/// What a registration writes.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub project: String,
    pub name: String,
    pub cluster: String,
    pub address: String,
    pub api_secret: String,
    pub max_concurrent: i32,
    pub resources: Value,
    pub labels: Value,
}

impl DataStore {
    /// Registers a node, or re-registers one with the same cluster and name
    /// (a restart): it keeps its id and becomes `ready` with its new address and key.
    pub async fn node_upsert(&self, node: &NewNode) -> Result<NodeRow> {
        let row = sqlx::query_as!(
            NodeRow,
            r#"
            insert into node (node_id, name, cluster, address, api_secret, max_concurrent, resources, labels, project)
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            on conflict (project, cluster, name) do update set
                address = excluded.address,
                api_secret = excluded.api_secret,
                max_concurrent = excluded.max_concurrent,
                resources = excluded.resources,
                labels = excluded.labels,
                state = 'ready',
                lost_at = null,
                forward_failures = 0,
                unreachable_until = null,
                registered_at = now(),
                last_heartbeat_at = now()
            returning node_id, project, name, cluster, address, api_secret, state as "state: NodeState",
                      max_concurrent, resources, labels, registered_at, last_heartbeat_at,
                      0::bigint as "running!", warm_workers
            "#,
            Uuid::now_v7(),
            node.name,
            node.cluster,
            node.address,
            node.api_secret,
            node.max_concurrent,
            node.resources,
            node.labels,
            node.project,
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row)
    }

    /// Vacuums the slot tables. Every placement and every finished call
    /// rewrites a slot row, and none of those can be a HOT update (the
    /// free-slot index's predicate names the holder), so a busy node's few
    /// rows pile up dead versions faster than autovacuum's minute: 150,000
    /// for 1,088 live rows over one 100,000 drain, each placing statement
    /// stepping through them. Tiny tables, so this takes milliseconds;
    /// `skip_locked`, so replicas never queue behind each other.
    pub async fn slot_vacuum(&self) -> Result<()> {
        sqlx::raw_sql("vacuum (skip_locked) node_slot, object_slot").execute(self.pool()).await?;
        Ok(())
    }

    /// Node `node_id` as a heartbeat sees it, with what the gateway believes
    /// runs there, in one statement: `None` if that node is unknown, someone
    /// else, or was declared lost (it must register again). Reads only: the
    /// heartbeat's time is written in the background, many nodes' at once
    /// ([`Self::node_heartbeats_record`]).
    pub async fn node_heartbeat_view(&self, node_id: Uuid, me: &NodeKey) -> Result<Option<HeartbeatView>> {
        let row = sqlx::query!(
            r#"
            select n.node_id, n.project, n.name, n.cluster, n.address, n.api_secret, n.state as "state: NodeState",
                   n.max_concurrent, n.resources, n.labels, n.registered_at, n.last_heartbeat_at, n.warm_workers,
                   coalesce(a.active, '[]') as "active!: Json<Vec<ActiveOnNode>>",
                   exists (select 1 from object o where o.node_id = n.node_id and o.state in ('starting', 'ready'))
                       as "has_objects!"
            from node n
            left join lateral (
                select json_agg(json_build_object(
                           'dispatch_id', d.dispatch_id, 'cancelling', i.state = 'cancelling',
                           'acked_at', d.acked_at, 'placed_at', coalesce(d.started_at, d.updated_at),
                           'requeues', d.requeues)) as active
                from dispatch_index i join dispatch d using (dispatch_id)
                where i.node_id = n.node_id and i.state in ('running', 'cancelling')
            ) a on true
            where n.node_id = $1 and n.state in ('ready', 'unreachable')
              and n.project = $2 and n.cluster = $3 and n.name = $4
            "#,
            node_id,
            me.cluster.project,
            me.cluster.name,
            me.name,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| {
            let active = r.active.0;
            HeartbeatView {
                node: NodeRow {
                    node_id: r.node_id,
                    project: r.project,
                    name: r.name,
                    cluster: r.cluster,
                    address: r.address,
                    api_secret: r.api_secret,
                    state: r.state,
                    max_concurrent: r.max_concurrent,
                    resources: r.resources,
                    labels: r.labels,
                    registered_at: r.registered_at,
                    last_heartbeat_at: r.last_heartbeat_at,
                    running: active.len() as i64,
                    warm_workers: r.warm_workers,
                },
                active,
                has_objects: r.has_objects,
            }
        }))
    }

    /// Records that `nodes` heartbeated now (with their warm workers, where
    /// given), in one statement. A node declared lost meanwhile stays lost.
    /// A time lost to a crash is restored by the node's next heartbeat, long
    /// before it could count as silent, so the commit does not wait for the disk.
    pub async fn node_heartbeats_record(&self, nodes: &[Uuid], warm_workers: &[Option<i32>]) -> Result<()> {
        sqlx::query!(
            r#"
            with beats as (
                select * from unnest($1::uuid[], $2::int[]) as b (node_id, warm_workers)
            ),
            touched as (
                update node n set last_heartbeat_at = now(), warm_workers = coalesce(b.warm_workers, n.warm_workers)
                from beats b
                where n.node_id = b.node_id and n.state in ('ready', 'unreachable')
            )
            select set_config('synchronous_commit', 'off', true)
            "#,
            nodes,
            warm_workers as &[Option<i32>]
        )
        .fetch_one(self.pool())
        .await?;
        Ok(())
    }

    /// Records that the nodes whose links this replica holds were heard from
    /// `ages_ms` ago (each one's link's last message), by the database's
    /// clock, so a skewed gateway clock cannot keep a node alive. A time never
    /// moves back, and a `lost` node stays lost (it registers again).
    pub async fn node_links_alive(&self, nodes: &[Uuid], ages_ms: &[i64]) -> Result<()> {
        sqlx::query!(
            r#"
            with seen as (
                select node_id, now() - make_interval(secs => age_ms / 1000.0) as at
                from unnest($1::uuid[], $2::bigint[]) as s (node_id, age_ms)
            ),
            touched as (
                update node n set last_heartbeat_at = s.at
                from seen s
                where n.node_id = s.node_id and n.state in ('ready', 'unreachable') and n.last_heartbeat_at < s.at
            )
            select set_config('synchronous_commit', 'off', true)
            "#,
            nodes,
            ages_ms
        )
        .fetch_one(self.pool())
        .await?;
        Ok(())
    }

    /// Records that `replica` holds node `node_id`'s link (a routing hint; see migration 0020).
    pub async fn node_link_held(&self, node_id: Uuid, replica: Uuid) -> Result<()> {
        sqlx::query!("update node set link_replica = $2 where node_id = $1", node_id, replica)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets that `replica` holds node `node_id`'s link, unless another's replaced it.
    pub async fn node_link_released(&self, node_id: Uuid, replica: Uuid) -> Result<()> {
        sqlx::query!("update node set link_replica = null where node_id = $1 and link_replica = $2", node_id, replica)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The replica that last said it holds node `node_id`'s link.
    pub async fn node_link_replica(&self, node_id: Uuid) -> Result<Option<Uuid>> {
        let holder = sqlx::query_scalar!("select link_replica from node where node_id = $1", node_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(holder.flatten())
    }

    /// One node.
    pub async fn node_get(&self, node_id: Uuid) -> Result<Option<NodeRow>> {
        let row = sqlx::query_as!(
            NodeRow,
            r#"
            select node_id, project, name, cluster, address, api_secret, state as "state: NodeState",
                   max_concurrent, resources, labels, registered_at, last_heartbeat_at,
                   node_running(n.node_id) as "running!", warm_workers
            from node n where node_id = $1
            "#,
            node_id
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Every node of `project`, optionally of one cluster.
    pub async fn node_list(&self, project: &str, cluster: Option<&str>) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query_as!(
            NodeRow,
            r#"
            select node_id, project, name, cluster, address, api_secret, state as "state: NodeState",
                   max_concurrent, resources, labels, registered_at, last_heartbeat_at,
                   node_running(n.node_id) as "running!", warm_workers
            from node n
            where project = $1 and ($2::text is null or cluster = $2)
            order by cluster, name
            "#,
            project,
            cluster
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Declares lost every ready node silent for more than `timeout_s`; returns their ids.
    pub async fn node_mark_lost(&self, timeout_s: f64) -> Result<Vec<Uuid>> {
        let ids = sqlx::query_scalar!(
            r#"
            update node set state = 'lost', lost_at = now()
            where state in ('ready', 'unreachable') and last_heartbeat_at < now() - make_interval(secs => $1)
            returning node_id
            "#,
            timeout_s
        )
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// Ids of lost nodes that still have dispatches running or cancelling on them.
    pub async fn node_lost_with_work(&self) -> Result<Vec<Uuid>> {
        let ids = sqlx::query_scalar!(
            r#"
            select distinct n.node_id from node n join dispatch_index d on d.node_id = n.node_id
            where n.state = 'lost' and d.state in ('running', 'cancelling')
            "#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }
}

impl DataStore {
    /// The id of node `key`, if it ever registered. Ids never change.
    pub async fn node_id_of(&self, key: &NodeKey) -> Result<Option<Uuid>> {
        let id = sqlx::query_scalar!(
            "select node_id from node where project = $1 and cluster = $2 and name = $3",
            key.cluster.project,
            key.cluster.name,
            key.name
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(id)
    }

    /// A forward reached `node_id`: its failed forwards are forgotten.
    pub async fn node_reached(&self, node_id: Uuid) -> Result<()> {
        sqlx::query!(
            "update node set forward_failures = 0, unreachable_until = null where node_id = $1 and forward_failures > 0",
            node_id
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A forward to the node could not connect: placement skips it for a
    /// while (100 ms, doubling per failure in a row, up to a minute), and after
    /// `limit` failures in a row it is `unreachable` until it registers again.
    pub async fn node_forward_failed(&self, node_id: Uuid, limit: i32) -> Result<()> {
        sqlx::query!(
            r#"
            update node set
                forward_failures = forward_failures + 1,
                unreachable_until = now() + make_interval(secs => least(60.0, 0.1 * power(2, forward_failures))),
                state = case when forward_failures + 1 >= $2 and state = 'ready' then 'unreachable' else state end
            where node_id = $1
            "#,
            node_id,
            limit
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
