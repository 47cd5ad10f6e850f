//! Dispatches: one remote call of a Python function, as seen over HTTP.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The id of a dispatch (a UUIDv7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid, example = "01936b8e-5a4c-7d2e-9f10-3c2b1a0d9e8f")]
pub struct DispatchId(pub Uuid);

impl std::fmt::Display for DispatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for DispatchId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(DispatchId)
    }
}

/// Where a dispatch is in its life.
///
/// `queued → running → succeeded | failed | cancelled | timed_out`, with
/// `cancelling` between `running` and `cancelled` while a cancel travels to the
/// node. The last four states are terminal: they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DispatchState {
    Queued,
    Running,
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl DispatchState {
    /// Every state, in lifecycle order.
    pub const ALL: [DispatchState; 7] = [
        DispatchState::Queued,
        DispatchState::Running,
        DispatchState::Cancelling,
        DispatchState::Succeeded,
        DispatchState::Failed,
        DispatchState::Cancelled,
        DispatchState::TimedOut,
    ];

    /// The snake_case name used in JSON, query strings and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchState::Queued => "queued",
            DispatchState::Running => "running",
            DispatchState::Cancelling => "cancelling",
            DispatchState::Succeeded => "succeeded",
            DispatchState::Failed => "failed",
            DispatchState::Cancelled => "cancelled",
            DispatchState::TimedOut => "timed_out",
        }
    }

    /// True for the states that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DispatchState::Succeeded | DispatchState::Failed | DispatchState::Cancelled | DispatchState::TimedOut
        )
    }
}

impl std::fmt::Display for DispatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DispatchState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DispatchState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = DispatchState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown state `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// The longest `timeout_s` a dispatch may ask for: 30 days.
pub const MAX_TIMEOUT_S: u32 = 30 * 86_400;

/// `POST /v1/dispatches`: run one Python function remotely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "function": "pipeline.train:fit",
    "args": [0.01],
    "kwargs": {"epochs": 3},
    "cluster": "train",
    "idempotency_key": "airflow-ml_pipeline-train-2026-11-22-try1",
    "labels": {"dag_id": "ml_pipeline", "task_id": "train"},
    "timeout_s": 3600
}))]
pub struct CreateDispatch {
    /// The function to call, as `module:qualname` (e.g. `pipeline.train:fit`).
    /// Give this or `function_name`.
    #[serde(default)]
    #[schema(min_length = 3, max_length = 512)]
    pub function: Option<String>,
    /// A function registered with `POST /v1/functions`; supplies the
    /// entrypoint, bundle, requirements and default cluster.
    #[serde(default)]
    pub function_name: Option<String>,
    /// sha256 of an uploaded code bundle to import `function` from.
    #[serde(default)]
    pub bundle: Option<String>,
    /// pip requirements; the node runs the call in a cached environment per set.
    #[serde(default)]
    pub requirements: Vec<String>,
    /// Positional arguments, as JSON values.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments, as a JSON object.
    #[serde(default)]
    pub kwargs: serde_json::Map<String, Value>,
    /// The cluster to run on (optional with a `function_name` that has a
    /// default): a cluster of the token's project, or `project/name` for one
    /// another project shares with it.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 129, pattern = "^([A-Za-z0-9._-]{1,64}/)?[A-Za-z0-9._-]{1,64}$")]
    pub cluster: Option<String>,
    /// Makes the create safe to retry: the same key and body return the
    /// existing dispatch; the same key with another body is a 409. Unique per project.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub idempotency_key: Option<String>,
    /// Free key/value labels, such as an orchestrator's dag, run and task ids.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ends the call as `timed_out` after this many seconds of running (1 to 2592000, 30 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    pub timeout_s: Option<u32>,
    /// Calls `method` of this live instance (`POST /v1/instances`) instead
    /// of a function: give it with `method`, and without `function`,
    /// `function_name`, `bundle`, `requirements` or `cluster` (the instance has them).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub instance: Option<String>,
    /// The method of `instance` to call.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub method: Option<String>,
    /// Answer from the cache: if a succeeded dispatch of this project has the
    /// same cache key (by default: bundle, entry point, the canonical JSON of
    /// the arguments and the requirement set), this one ends `succeeded` at
    /// once with its result (`cached_from` names it), without running; if an
    /// identical one is still running, this one waits for it and takes its
    /// result. Failed, cancelled and timed-out runs are never used.
    #[serde(default)]
    pub cache: bool,
    /// Caches under this key instead of the default one (implies `cache`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub cache_key: Option<String>,
    /// Only a result at most this many seconds old answers (default: any age).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub cache_ttl_s: Option<u32>,
}

/// `POST /v1/dispatches/{id}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "superseded by a newer run"}))]
pub struct CancelDispatch {
    /// Why the dispatch is being cancelled; recorded in its event log.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub reason: Option<String>,
}

/// How a failed dispatch failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "code": "user_exception",
    "message": "ValueError: learning rate must be positive",
    "remote_type": "ValueError",
    "traceback": "Traceback (most recent call last):\n  ..."
}))]
pub struct DispatchFailure {
    /// A stable code: `user_exception`, `worker_crashed`, `node_lost`, ...
    pub code: String,
    /// A human-readable message.
    pub message: String,
    /// The Python exception type, for `user_exception`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_type: Option<String>,
    /// The full remote traceback, for `user_exception`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// The exit code of a script, shell command or notebook run that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl DispatchFailure {
    /// A failure with `code` and `message` and nothing else.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> DispatchFailure {
        DispatchFailure {
            code: code.into(),
            message: message.into(),
            remote_type: None,
            traceback: None,
            exit_code: None,
        }
    }
}

/// Who cancelled a dispatch, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancellation {
    /// The `sub` of the token that asked for the cancel.
    pub by: String,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// When the cancel was asked for.
    pub at: DateTime<Utc>,
}

/// A dispatch: one recorded remote call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dispatch {
    pub id: DispatchId,
    /// The project the dispatch belongs to (from the creating token).
    pub project: String,
    /// The function reference, `module:qualname`.
    pub function: String,
    /// The registered function it was called through, if any.
    pub function_name: Option<String>,
    /// sha256 of the code bundle it ran from, if any.
    pub bundle: Option<String>,
    pub requirements: Vec<String>,
    pub args: Vec<Value>,
    pub kwargs: serde_json::Map<String, Value>,
    pub cluster: String,
    /// The instance whose constructor (without `method`) or method this runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The dispatch whose result answered this one (or, while it is queued,
    /// the identical one it waits for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<DispatchId>,
    pub state: DispatchState,
    /// Why a `queued` dispatch has not started (e.g. its cluster is being
    /// provisioned). Filled in by create, get and wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_reason: Option<String>,
    /// Bumped by every state change; writes compare-and-set on it.
    pub generation: i64,
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The `sub` of the token that created the dispatch.
    pub requester: String,
    /// The node it was placed on, once placed.
    pub node_id: Option<Uuid>,
    pub timeout_s: Option<u32>,
    /// The function's JSON result, once `succeeded`.
    pub result: Option<Value>,
    /// Why it failed, once `failed` or `timed_out`.
    pub failure: Option<DispatchFailure>,
    /// Who cancelled it and why, once a cancel was asked for.
    pub cancellation: Option<Cancellation>,
    /// True if its log hit the size limit.
    pub log_truncated: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// One entry of a dispatch's append-only event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DispatchEvent {
    /// Increases with every event, across all dispatches.
    pub seq: i64,
    pub dispatch_id: DispatchId,
    /// The state before the transition; absent for the creating event.
    pub from_state: Option<DispatchState>,
    pub to_state: DispatchState,
    /// The generation after the transition.
    pub generation: i64,
    /// Who caused it: a token's `sub`, a node id or `gateway`.
    pub actor: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A page of dispatches, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DispatchPage {
    pub items: Vec<Dispatch>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The event log of one dispatch, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DispatchEventList {
    pub items: Vec<DispatchEvent>,
}

/// Filters for `GET /v1/dispatches`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDispatches {
    /// Only these states (repeat the parameter for several).
    #[serde(default)]
    #[param(value_type = Option<Vec<String>>, example = "running")]
    pub state: Vec<String>,
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this function: its registered name, or else its entry point (`module:qualname`).
    pub function: Option<String>,
    /// Only dispatches carrying this label, as `key=value` (repeat to require several).
    #[serde(default)]
    #[param(value_type = Option<Vec<String>>, example = "dag_id=ml_pipeline")]
    pub label: Vec<String>,
    /// Only dispatches created at or after this instant (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Only dispatches created before this instant (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Query of `POST /v1/dispatches`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Hold the answer until the dispatch ends or this many seconds pass, 0
    /// to 300 (as `GET /v1/dispatches/{id}/wait` would): a short call then
    /// takes one request. Without it the answer comes once it is recorded.
    #[param(maximum = 300)]
    pub wait_s: Option<u32>,
}

/// Query of `GET /v1/dispatches/{id}/wait`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Longest time to hold the request, 0 to 300 seconds (default 30).
    #[param(maximum = 300)]
    pub timeout_s: Option<u32>,
}

/// What a node (or an operator with `admin` scope) reports about a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// The node accepted the call and started it.
    Started,
    /// The call returned; `result` holds its JSON value.
    Succeeded,
    /// The call failed; `failure` says how.
    Failed,
    /// The call ran past its `timeout_s` and was stopped.
    TimedOut,
    /// The node stopped the call after a cancel.
    CancelConfirmed,
}

/// `POST /v1/dispatches/{id}/reports`: a state change observed by a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "succeeded", "result": {"accuracy": 0.97}}))]
pub struct Report {
    pub kind: ReportKind,
    /// If set, the report applies only while the dispatch is at this generation.
    #[serde(default)]
    pub expected_generation: Option<i64>,
    /// The JSON result, for `succeeded`.
    #[serde(default)]
    pub result: Option<Value>,
    /// The failure, for `failed` and `timed_out`.
    #[serde(default)]
    pub failure: Option<DispatchFailure>,
    /// Free text recorded in the event log.
    #[serde(default)]
    pub reason: Option<String>,
    /// Output not shipped yet (the call's last lines), stored with the
    /// report in one commit. Entries follow the `POST .../logs` rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<crate::LogEntry>,
    /// With `cancel_confirmed` or `timed_out` of an instance's method call:
    /// the call did not stop (it was blocked outside Python), so its thread
    /// was left to finish and its result will be discarded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abandoned: bool,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when healthy.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_from_their_own_names_and_refuse_others() {
        for state in DispatchState::ALL {
            assert_eq!(state.as_str().parse::<DispatchState>().unwrap(), state);
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        let err = "sleeping".parse::<DispatchState>().unwrap_err();
        assert!(err.contains("unknown state `sleeping`") && err.contains("timed_out"), "{err}");
    }

    #[test]
    fn exactly_four_states_are_terminal() {
        let terminal: Vec<_> = DispatchState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            [DispatchState::Succeeded, DispatchState::Failed, DispatchState::Cancelled, DispatchState::TimedOut]
        );
    }

    #[test]
    fn a_create_request_refuses_unknown_fields() {
        let err = serde_json::from_value::<CreateDispatch>(serde_json::json!({
            "function": "m:f", "cluster": "c", "priority": 1
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `priority`"), "{err}");
    }

    #[test]
    fn a_minimal_create_request_fills_in_defaults() {
        let req: CreateDispatch =
            serde_json::from_value(serde_json::json!({"function": "m:f", "cluster": "c"})).unwrap();
        assert!(req.args.is_empty() && req.kwargs.is_empty() && req.labels.is_empty());
        assert_eq!(req.idempotency_key, None);
        assert_eq!(req.timeout_s, None);
    }
}
