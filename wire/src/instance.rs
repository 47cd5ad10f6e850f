//! Remote objects: a class constructed once on a node ("an instance"),
//! whose methods are then called many times, by any number of clients.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{DispatchFailure, DispatchId};

/// What happens to an instance whose node is lost (or that was stopped for being idle).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceRestart {
    /// It stays `lost`; calls get 409 until it is deleted and created again.
    #[default]
    Never,
    /// The next method call constructs it again, with the same arguments.
    OnLost,
}

impl InstanceRestart {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceRestart::Never => "never",
            InstanceRestart::OnLost => "on_lost",
        }
    }
}

/// `POST /v1/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "bert-ft",
    "class": "my_project.train:Trainer",
    "bundle": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "kwargs": {"lr": 0.01},
    "cluster": "train",
    "max_concurrency": 8,
    "idle_stop_minutes": 60
}))]
pub struct CreateInstance {
    /// Unique among the project's live instances. 1–64 of `[A-Za-z0-9._-]`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// The class, as `module:Qualname`.
    #[schema(min_length = 3, max_length = 512)]
    pub class: String,
    /// sha256 of an uploaded code bundle to import `class` from.
    #[serde(default)]
    pub bundle: Option<String>,
    /// pip requirements of its environment.
    #[serde(default)]
    pub requirements: Vec<String>,
    /// Positional arguments of the constructor.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments of the constructor.
    #[serde(default)]
    pub kwargs: serde_json::Map<String, Value>,
    /// The cluster it lives on: one of the token's project, or `project/name` of a shared one.
    #[schema(min_length = 1, max_length = 129)]
    pub cluster: String,
    /// Method calls that run at once, on threads of its worker (1 to 256,
    /// default 8); more wait at the gateway.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 256)]
    pub max_concurrency: Option<u32>,
    /// Stop it after this many minutes without a call (its cluster can then
    /// autostop). A stopped instance is `lost`; with `restart: on_lost` the
    /// next call constructs it again.
    #[serde(default)]
    pub idle_stop_minutes: Option<f64>,
    #[serde(default)]
    pub restart: InstanceRestart,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Its constructor is queued or running; method calls wait behind it.
    Starting,
    /// Constructed; method calls run.
    Ready,
    /// The constructor raised (see `failure`); calls get 409.
    Failed,
    /// Its node died or was stopped, or it was stopped for being idle.
    Lost,
    Deleted,
}

/// Something that happened to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceEvent {
    pub seq: i64,
    /// `created`, `ready`, `constructor_ended`, `lost`, `restarted`,
    /// `call_abandoned`, `idle_stopped` or `deleted`.
    pub kind: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// An instance, as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub class: String,
    pub bundle: Option<String>,
    pub requirements: Vec<String>,
    pub args: Vec<Value>,
    pub kwargs: serde_json::Map<String, Value>,
    pub cluster: String,
    pub max_concurrency: u32,
    pub idle_stop_minutes: Option<f64>,
    pub restart: InstanceRestart,
    pub state: InstanceState,
    /// Why it is in its state.
    pub state_reason: Option<String>,
    /// The constructor's failure, when `failed`.
    pub failure: Option<DispatchFailure>,
    /// The node hosting it.
    pub node_id: Option<Uuid>,
    /// The dispatch that ran its (latest) constructor: its logs are the constructor's output.
    pub constructor_id: Option<DispatchId>,
    /// Times it was constructed again after being lost.
    pub restarts: i32,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
    /// Its latest events, oldest first (on `GET /v1/instances/{name}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<InstanceEvent>,
}

/// `GET /v1/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub items: Vec<Instance>,
}

/// Gateway → node: the instance a call belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceCall {
    pub instance_id: Uuid,
    /// The method to call; absent for the constructor (the call's
    /// `function` is then the class).
    pub method: Option<String>,
}
