//! Background tasks: each is a step function that takes no input, is safe to
//! repeat, and runs on a period and whenever it is signalled. The driver
//! records each step's outcome, served at `GET /v1/admin/background-tasks`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The last outcome of one background task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskStatus {
    pub activations: u64,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_duration_ms: f64,
    /// What the last step reported, or its error.
    #[schema(value_type = Object)]
    pub last_result: serde_json::Value,
}

/// Statuses of every task, by name.
#[derive(Clone, Default)]
pub struct Statuses(Arc<Mutex<BTreeMap<&'static str, TaskStatus>>>);

impl Statuses {
    /// A copy of every status.
    pub fn snapshot(&self) -> BTreeMap<String, TaskStatus> {
        let statuses = self.0.lock().expect("status lock poisoned");
        statuses.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
}

/// Runs `step` every `period`, and at once whenever `activator` is notified,
/// until `shutdown`. Errors are logged with their chain and recorded.
pub fn spawn<F, Fut>(
    name: &'static str,
    period: Duration,
    activator: Arc<Notify>,
    shutdown: CancellationToken,
    statuses: Statuses,
    step: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = crate::Result<serde_json::Value>> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
                _ = activator.notified() => {}
            }
            let started_at = Utc::now();
            let started = std::time::Instant::now();
            let result = match step().await {
                Ok(value) => value,
                Err(err) => {
                    tracing::warn!(task = name, error = ?anyhow::Error::new(err), "background step failed");
                    serde_json::json!({ "error": "step failed; see the gateway log" })
                }
            };
            let mut statuses = statuses.0.lock().expect("status lock poisoned");
            let status = statuses.entry(name).or_insert(TaskStatus {
                activations: 0,
                last_started_at: None,
                last_duration_ms: 0.0,
                last_result: serde_json::Value::Null,
            });
            status.activations += 1;
            status.last_started_at = Some(started_at);
            status.last_duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            status.last_result = result;
        }
    })
}
