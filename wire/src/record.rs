//! Run records: what a call ran with, kept so it can be run again elsewhere.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{DispatchFailure, DispatchId, DispatchState};

/// An installed Python distribution.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// Node → gateway, when a call starts: what the node runs it with. (It is
/// flattened into [`RunRecord`], so it admits no `deny_unknown_fields`: the
/// record's own fields would be unknown to it in the OpenAPI document.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeRunInfo {
    /// The worker's Python version (`sys.version`).
    pub python: String,
    /// OS, kernel release and machine (`linux 6.1.0 x86_64`).
    pub platform: String,
    /// What the call's requirement set resolved to: every distribution in its environment.
    pub packages: Vec<Package>,
    /// Distributions of the interpreter's own site-packages.
    pub base_packages: Vec<Package>,
    /// Names (never values) of the environment variables the call saw.
    pub env_names: Vec<String>,
}

/// Node → gateway: the run records of calls that started, batched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRecordBatch {
    /// The environments the items ran in, each once; an item names its own
    /// by its index here. The gateway stores each environment once, however
    /// many calls ran in it.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub environments: Vec<NodeRunInfo>,
    #[schema(max_items = 1000)]
    pub items: Vec<NodeRunRecord>,
}

/// One call's part of a run record, as its node sends it: its environment,
/// either as an index into the batch's `environments` or (as nodes before
/// shared environments sent it) whole in `run`. Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRunRecord {
    pub dispatch_id: DispatchId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<NodeRunInfo>,
}

/// Where a call ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordPlace {
    pub node_id: Uuid,
    pub node: String,
    pub cluster: String,
    /// `local`, `static`, `aws` or `gcp`, when the cluster is one the gateway provisions.
    pub provider: Option<String>,
    pub instance_type: Option<String>,
}

/// `GET /v1/dispatches/{id}/record`: everything needed to run the call again.
///
/// Stored once, when the call starts on its node, and never rewritten;
/// `state`, the timings and `failure` are read live from the dispatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunRecord {
    pub dispatch_id: DispatchId,
    /// sha256 of the code bundle.
    pub bundle: Option<String>,
    /// Where the bundle was packed from (git commit, dirty tree, packing tool), if its packer said.
    #[serde(default)]
    pub source: Option<crate::BundleSource>,
    /// `module:qualname` (for a method call, `module:Class.method`).
    pub function: String,
    /// The instance and method, for a method call.
    pub instance_id: Option<Uuid>,
    pub method: Option<String>,
    pub args: Vec<Value>,
    pub kwargs: serde_json::Map<String, Value>,
    /// sha256 of the canonical JSON of `[args, kwargs]`.
    pub args_hash: String,
    /// The requirement set as asked.
    pub requirements: Vec<String>,
    #[serde(flatten)]
    pub run: NodeRunInfo,
    pub place: RecordPlace,
    pub recorded_at: DateTime<Utc>,
    pub state: DispatchState,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub failure: Option<DispatchFailure>,
    /// The files the call kept, as they are now.
    #[serde(default)]
    pub artifacts: Vec<crate::Artifact>,
}
