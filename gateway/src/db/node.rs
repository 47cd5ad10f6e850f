//! Node rows: registration, heartbeats and loss.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

/// Whether a node is reachable, as stored in the `node_state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "node_state", rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    Lost,
}

/// One row of `node`, with the number of dispatches running on it.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node_id: Uuid,
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
}

/// Where and how the gateway reaches a node: what forwarding a call needs.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    pub node_id: Uuid,
    pub name: String,
    pub address: String,
    /// The key the gateway signs its requests to this node with.
    pub api_secret: String,
}

impl From<&NodeRow> for NodeEndpoint {
    fn from(row: &NodeRow) -> Self {
        NodeEndpoint {
            node_id: row.node_id,
            name: row.name.clone(),
            address: row.address.clone(),
            api_secret: row.api_secret.clone(),
        }
    }
}

/// What a registration writes.
#[derive(Debug, Clone)]
pub struct NewNode {
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
            insert into node (node_id, name, cluster, address, api_secret, max_concurrent, resources, labels)
            values ($1, $2, $3, $4, $5, $6, $7, $8)
            on conflict (cluster, name) do update set
                address = excluded.address,
                api_secret = excluded.api_secret,
                max_concurrent = excluded.max_concurrent,
                resources = excluded.resources,
                labels = excluded.labels,
                state = 'ready',
                lost_at = null,
                registered_at = now(),
                last_heartbeat_at = now()
            returning node_id, name, cluster, address, api_secret, state as "state: NodeState",
                      max_concurrent, resources, labels, registered_at, last_heartbeat_at,
                      0::bigint as "running!"
            "#,
            Uuid::now_v7(),
            node.name,
            node.cluster,
            node.address,
            node.api_secret,
            node.max_concurrent,
            node.resources,
            node.labels,
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row)
    }

    /// Records a heartbeat. `None` if the node is unknown or was declared lost
    /// (it must register again).
    pub async fn node_heartbeat(&self, node_id: Uuid) -> Result<Option<NodeRow>> {
        let row = sqlx::query_as!(
            NodeRow,
            r#"
            update node n set last_heartbeat_at = now()
            where node_id = $1 and state = 'ready'
            returning node_id, name, cluster, address, api_secret, state as "state: NodeState",
                      max_concurrent, resources, labels, registered_at, last_heartbeat_at,
                      node_running(n.node_id) as "running!"
            "#,
            node_id
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// One node.
    pub async fn node_get(&self, node_id: Uuid) -> Result<Option<NodeRow>> {
        let row = sqlx::query_as!(
            NodeRow,
            r#"
            select node_id, name, cluster, address, api_secret, state as "state: NodeState",
                   max_concurrent, resources, labels, registered_at, last_heartbeat_at,
                   node_running(n.node_id) as "running!"
            from node n where node_id = $1
            "#,
            node_id
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Every node, optionally of one cluster.
    pub async fn node_list(&self, cluster: Option<&str>) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query_as!(
            NodeRow,
            r#"
            select node_id, name, cluster, address, api_secret, state as "state: NodeState",
                   max_concurrent, resources, labels, registered_at, last_heartbeat_at,
                   node_running(n.node_id) as "running!"
            from node n
            where $1::text is null or cluster = $1
            order by cluster, name
            "#,
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
            where state = 'ready' and last_heartbeat_at < now() - make_interval(secs => $1)
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
            select distinct n.node_id from node n join dispatch d on d.node_id = n.node_id
            where n.state = 'lost' and d.state in ('running', 'cancelling')
            "#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }
}
