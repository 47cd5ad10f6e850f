//! Node daemons: registration and heartbeats (node → gateway) and the call
//! API each node serves (gateway → node).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::DispatchId;

/// The id of a registered node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct NodeId(pub Uuid);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a node offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeResources {
    pub cpus: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: u32,
}

/// `POST /v1/nodes`: a node joins (or rejoins) its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "worker-1", "cluster": "local", "address": "http://127.0.0.1:7070",
    "api_secret": "9f1c…", "max_concurrent": 8,
    "resources": {"cpus": 8, "memory_bytes": 34359738368u64, "gpus": 0},
    "labels": {"zone": "lab"}, "running": []
}))]
pub struct RegisterNode {
    /// Unique within the cluster; a node that restarts keeps its name and its
    /// row. Must be the node its credential names.
    #[schema(min_length = 1, max_length = 80, pattern = "^[A-Za-z0-9._-]{1,80}$")]
    pub name: String,
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub cluster: String,
    /// The base URL where the gateway reaches the node's API.
    pub address: String,
    /// A fresh random key; the gateway signs every request to the node with it.
    pub api_secret: String,
    /// Most calls the node runs at once.
    pub max_concurrent: u32,
    #[serde(default)]
    pub resources: NodeResources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Dispatches the node is still running (after a restart of the gateway, say).
    #[serde(default)]
    pub running: Vec<DispatchId>,
}

/// The gateway's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeRegistered {
    pub node_id: NodeId,
    /// How often to send `POST /v1/nodes/{id}/heartbeat`.
    pub heartbeat_interval_s: u32,
    /// How often to send it while the node's link is open: the gateway pings
    /// the link every `heartbeat_interval_s`, and the pongs keep the node
    /// alive in between. Absent: every `heartbeat_interval_s` regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_heartbeat_interval_s: Option<u32>,
    /// The largest result (JSON bytes) the gateway stores; a node fails a
    /// larger one with `result_too_large` instead of sending it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_result_bytes: Option<u64>,
    /// What a call may keep under `$RH_OUTPUTS`; a node fails a call that
    /// keeps more with `artifact_too_large` instead of uploading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_limits: Option<ArtifactLimits>,
}

/// Limits on the files one call keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactLimits {
    pub max_file_bytes: u64,
    pub max_call_bytes: u64,
    pub max_files: u32,
}

/// `POST /v1/nodes/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Every dispatch the node is running or still has a report pending for.
    pub running: Vec<DispatchId>,
    /// Every instance the node hosts.
    #[serde(default)]
    pub instances: Vec<uuid::Uuid>,
    /// How many Python workers the node keeps warm (idle, busy or hosting an instance).
    #[serde(default)]
    pub warm_workers: Option<u32>,
}

/// Whether a node is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    /// Missed heartbeats past the timeout; its dispatches failed with `node_lost`.
    Lost,
    /// Heartbeats, but refused the gateway's connections too often: nothing
    /// is placed on it until it registers again (check its advertised address).
    Unreachable,
}

/// A node, as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub cluster: String,
    /// Where the gateway reaches it; shown only to admins of its project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub state: NodeState,
    pub max_concurrent: u32,
    /// Dispatches running (or cancelling) on it now.
    pub running: u32,
    pub resources: NodeResources,
    pub labels: BTreeMap<String, String>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// Warm Python workers at its last heartbeat, if it reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_workers: Option<u32>,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub items: Vec<Node>,
}

/// Gateway → node: start one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCall {
    pub dispatch_id: DispatchId,
    /// `module:qualname`.
    pub function: String,
    pub args: Vec<Value>,
    pub kwargs: serde_json::Map<String, Value>,
    /// sha256 of the code bundle, if any.
    pub bundle: Option<String>,
    /// pip requirements for the call's environment.
    #[serde(default)]
    pub requirements: Vec<String>,
    pub timeout_s: Option<u32>,
    /// Set when the call constructs an instance or calls its method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<crate::InstanceCall>,
}

/// Gateway → node: stop a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelCall {
    /// Who asked for the cancel.
    pub by: String,
    pub reason: Option<String>,
}

/// One call a node is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunningCall {
    pub dispatch_id: DispatchId,
    pub started_at: DateTime<Utc>,
    /// The worker process's pid, while one runs the call.
    pub pid: Option<u32>,
}

/// `GET /calls` on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunningCalls {
    pub items: Vec<RunningCall>,
}
