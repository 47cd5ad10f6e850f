//! Clusters: compute the gateway provisions (local processes, existing hosts,
//! EC2 or Compute Engine instances) whose machines join as nodes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Node;

/// What a cluster runs on and how big it is. Which fields apply depends on
/// the provider: `instance_type` and `region` for `aws`, `instance_type`
/// (machine type) and `zone` for `gcp`; `local` and `static` use `count`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "provider": "aws", "instance_type": "g5.xlarge", "region": "us-east-1",
    "image": "ami-0abcdef1234567890", "count": 1, "gpus": 1,
    "labels": {"team": "vision"}, "autostop_idle_minutes": 30,
    "bootstrap": ["pip install torch==2.5.1"]
}))]
pub struct ClusterSpec {
    /// `local`, `static`, `aws` or `gcp`.
    pub provider: String,
    /// EC2 instance type or GCE machine type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// AWS region (defaults to the provider's configured region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// GCE zone (defaults to the provider's configured zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// AMI id or GCE image URL (defaults to the provider's configured image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How many nodes (1 to 64). Defaults to 1.
    #[serde(default = "one")]
    pub count: u32,
    /// GPUs per node: GCE attaches `gpu_type` accelerators; on EC2 pick an instance type that has them.
    #[serde(default)]
    pub gpus: u32,
    /// GCE accelerator type, e.g. `nvidia-tesla-t4`, when `gpus` > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// Labels every node of the cluster carries.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Stop the cluster after this many minutes without a queued or running
    /// dispatch (fractions allowed: 0.5 is 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop_idle_minutes: Option<f64>,
    /// Shell commands run on each machine before the node daemon starts.
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

fn one() -> u32 {
    1
}

/// `POST /v1/clusters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "cpu", "spec": {"provider": "local", "count": 2, "autostop_idle_minutes": 10}}))]
pub struct CreateCluster {
    /// What dispatches name as their `cluster`, unique among the project's
    /// live clusters. 1–64 of `[A-Za-z0-9._-]`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    pub spec: ClusterSpec,
    /// Other projects that may dispatch to this cluster (naming it
    /// `project/name`); they cannot list, read or delete it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
}

/// Where a cluster is in its life.
///
/// `provisioning → ready → stopping → terminated`, or `failed` (with a
/// reason) from `provisioning` when the provider refuses or a machine never joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    Provisioning,
    Ready,
    Stopping,
    Terminated,
    Failed,
}

impl ClusterState {
    /// The snake_case name used in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Provisioning => "provisioning",
            ClusterState::Ready => "ready",
            ClusterState::Stopping => "stopping",
            ClusterState::Terminated => "terminated",
            ClusterState::Failed => "failed",
        }
    }

    /// True while the cluster holds (or is getting) compute.
    pub fn is_live(self) -> bool {
        matches!(self, ClusterState::Provisioning | ClusterState::Ready | ClusterState::Stopping)
    }
}

/// One machine (process, host) of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInstance {
    /// The node name its daemon joins with.
    pub node_name: String,
    /// `requested` (intent recorded), `created`, `terminating` or `terminated`.
    pub state: String,
    /// The provider's id: EC2 instance id, GCE instance name, or local pid.
    pub provider_id: Option<String>,
    pub joined_at: Option<DateTime<Utc>>,
}

/// A cluster, its machines and the nodes that joined from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    pub id: Uuid,
    /// The project owning it.
    pub project: String,
    pub name: String,
    /// Other projects that may dispatch to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    pub spec: ClusterSpec,
    /// The gateway profile it was brought up from, if a dispatch did that.
    pub profile: Option<String>,
    pub state: ClusterState,
    /// Why it is in its state: the provider's error when `failed`, who stopped it and why.
    pub state_reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
    pub terminated_at: Option<DateTime<Utc>>,
    pub instances: Vec<ClusterInstance>,
    /// Ready nodes in the cluster now.
    pub nodes: Vec<Node>,
}

/// `GET /v1/clusters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterList {
    pub items: Vec<Cluster>,
}

/// `GET /v1/clusters?state=…`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListClusters {
    /// Include terminated and failed clusters (history). Default: live ones only.
    #[serde(default)]
    pub all: bool,
}

/// `POST /v1/clusters/{name}/join-tokens`: a token for one more host of a `static` cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenCreated {
    /// Pass it to `rh-node run --join`; it works once, before `expires_at`.
    pub join_token: String,
    /// The name the host's node will have.
    pub node_name: String,
    pub expires_at: DateTime<Utc>,
    /// The command to run on the host.
    pub command: String,
}

/// `POST /v1/nodes/join`: a new machine trades its join token for a node token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"join_token": "rhj_3f0c…", "instance_id": "i-0123456789abcdef0"}))]
pub struct JoinNode {
    pub join_token: String,
    /// The provider's id for this machine (EC2 instance id, GCE name), when it knows it.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// The gateway's answer to a join: who the node is and its long-lived token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeJoined {
    pub cluster: String,
    pub name: String,
    /// A node-scoped token; keep it to re-register after restarts.
    pub token: String,
    /// Labels from the cluster spec.
    pub labels: BTreeMap<String, String>,
}
