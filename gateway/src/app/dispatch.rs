//! Dispatch use cases: create (idempotently), read, list, cancel, wait, and
//! the state reports that nodes send.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::App;
use crate::auth::{Caller, Scope};
use crate::db::{DispatchRow, EventRow, ListFilter, LogStream, NewDispatch, Transition};
use crate::dispatch::{DispatchState, Event, Next};
use crate::{Error, Result};

const MAX_LABELS: usize = 64;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
const DEFAULT_WAIT_S: u32 = 30;

/// How a create ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new dispatch was recorded.
    New,
    /// The idempotency key matched an earlier, identical request.
    Existing,
}

/// Details that come with a state change.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub reason: Option<String>,
    pub result: Option<Value>,
    pub failure: Option<Value>,
    pub expected_generation: Option<i64>,
    /// Output shipped with the change (a node's last lines), stored with it.
    pub logs: Vec<(i64, LogStream, String)>,
}

impl Outcome {
    /// A gateway-side failure (`code`, e.g. `node_lost`) with `message` as the reason.
    pub fn failed(code: &str, message: &str) -> Outcome {
        let failure =
            wire::DispatchFailure { code: code.into(), message: message.into(), remote_type: None, traceback: None };
        Outcome {
            reason: Some(message.into()),
            failure: Some(serde_json::to_value(failure).expect("failure serializes")),
            ..Outcome::default()
        }
    }
}

impl App {
    /// Records a new dispatch, or returns the one this idempotency key already made.
    pub async fn dispatch_create(&self, caller: &Caller, req: wire::CreateDispatch) -> Result<(DispatchRow, Created)> {
        let request_hash = request_hash(&req);
        let target = self.dispatch_target(caller, &req).await?;
        validate_create(&req, &target)?;
        self.cluster_ensure_for_dispatch(&target.cluster, &caller.sub).await?;
        let new = NewDispatch {
            dispatch_id: Uuid::now_v7(),
            project: caller.project.clone(),
            request_hash,
            function_ref: target.function,
            function_name: req.function_name,
            bundle: target.bundle,
            requirements: serde_json::json!(target.requirements),
            args: Value::Array(req.args),
            kwargs: Value::Object(req.kwargs),
            cluster: target.cluster,
            idempotency_key: req.idempotency_key,
            requester: caller.sub.clone(),
            labels: serde_json::to_value(&req.labels).map_err(|e| Error::Internal(e.into()))?,
            timeout_s: req.timeout_s.map(|t| t as i32),
        };
        // The insert runs in its own task: if the client disconnects mid-request,
        // the write still completes (or fails) as a whole, never halfway.
        let db = self.db.clone();
        let new_for_insert = new.clone();
        let inserted = tokio::spawn(async move { db.dispatch_insert_and_place(&new_for_insert).await })
            .await
            .map_err(|e| Error::Internal(e.into()))??;
        // Nobody can wait on a dispatch before its create returns: no one to wake.
        if let Some((row, node)) = inserted {
            match node {
                // Placed in the same commit: forwarded now, no placement pass needed.
                Some(node) => self.dispatch_forward(row.clone(), node),
                None => self.placement_wanted(&row.cluster),
            }
            return Ok((row, Created::New));
        }
        let key = new.idempotency_key.as_deref().expect("only a keyed insert can conflict");
        let existing = self
            .db
            .dispatch_by_idempotency_key(&new.project, key)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("idempotency key conflict without a row")))?;
        if existing.request_hash != new.request_hash {
            return Err(Error::IdempotencyConflict { key: key.to_owned() });
        }
        Ok((existing, Created::Existing))
    }

    /// One dispatch of the caller's project.
    pub async fn dispatch_get(&self, caller: &Caller, id: Uuid) -> Result<DispatchRow> {
        self.db.dispatch_get(Some(&caller.project), id).await?.ok_or_else(|| not_found(id))
    }

    /// A page of the caller's dispatches, newest first, and the cursor of the next page.
    pub async fn dispatch_list(
        &self,
        caller: &Caller,
        query: wire::ListDispatches,
    ) -> Result<(Vec<DispatchRow>, Option<String>)> {
        let limit = query.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::invalid("limit", format!("`limit` must be between 1 and {MAX_PAGE}")));
        }
        let states = query
            .state
            .iter()
            .map(|s| s.parse::<wire::DispatchState>().map(Into::into))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| Error::invalid("state", format!("`state`: {message}")))?;
        let mut labels = serde_json::Map::new();
        for pair in &query.label {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::invalid("label", format!("`label` must be `key=value`, got `{pair}`")))?;
            labels.insert(key.to_owned(), Value::String(value.to_owned()));
        }
        let before_id = query.cursor.as_deref().map(cursor_decode).transpose()?;
        let filter = ListFilter {
            states,
            cluster: query.cluster,
            labels: Value::Object(labels),
            created_after: query.created_after,
            created_before: query.created_before,
            before_id,
            limit: i64::from(limit) + 1,
        };
        let mut rows = self.db.dispatch_list(&caller.project, &filter).await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|last| cursor_encode(last.dispatch_id))
        } else {
            None
        };
        Ok((rows, next))
    }

    /// The event log of one of the caller's dispatches.
    pub async fn dispatch_events(&self, caller: &Caller, id: Uuid) -> Result<Vec<EventRow>> {
        self.dispatch_get(caller, id).await?;
        self.db.dispatch_events(id).await
    }

    /// Asks for a cancel. Idempotent: a dispatch already cancelling or finished
    /// is returned unchanged. A running dispatch becomes `cancelling`, and the
    /// cancel is sent to its node at once (the cancel reconciler repeats it
    /// until the node confirms).
    pub async fn dispatch_cancel(&self, caller: &Caller, id: Uuid, reason: Option<String>) -> Result<DispatchRow> {
        let outcome = Outcome { reason, ..Outcome::default() };
        let row = self.dispatch_apply(Some(&caller.project), id, Event::Cancel, &caller.sub, outcome).await?;
        if row.state == DispatchState::Cancelling {
            let app = self.clone();
            let row = row.clone();
            tokio::spawn(async move { app.cancel_forward(&row).await });
        }
        Ok(row)
    }

    /// Applies a node's report, and the output shipped with it. A `node`
    /// token may report on any project's dispatch; an `admin` token only on
    /// its own project's.
    pub async fn dispatch_report(&self, caller: &Caller, id: Uuid, report: wire::Report) -> Result<DispatchRow> {
        let project =
            if caller.has(Scope::Node) && !caller.has(Scope::Admin) { None } else { Some(caller.project.as_str()) };
        let (event, failure) = match report.kind {
            wire::ReportKind::Started => (Event::Start, None),
            wire::ReportKind::Succeeded => (Event::Succeed, None),
            wire::ReportKind::CancelConfirmed => (Event::CancelConfirmed, None),
            wire::ReportKind::Failed => {
                let failure = report
                    .failure
                    .clone()
                    .ok_or_else(|| Error::invalid("failure", "a `failed` report needs `failure` ({code, message})"))?;
                (Event::Fail, Some(failure))
            }
            wire::ReportKind::TimedOut => {
                let failure = report.failure.clone().unwrap_or(wire::DispatchFailure {
                    code: "timed_out".into(),
                    message: "the call ran past its timeout_s".into(),
                    remote_type: None,
                    traceback: None,
                });
                (Event::TimeOut, Some(failure))
            }
        };
        if report.result.is_some() && event != Event::Succeed {
            return Err(Error::invalid("result", "`result` is only accepted with a `succeeded` report"));
        }
        let logs = super::logs::entries_checked(report.logs, "logs.seq")?;
        let outcome = Outcome {
            reason: report.reason,
            result: (event == Event::Succeed).then(|| report.result.unwrap_or(Value::Null)),
            failure: failure.map(|f| serde_json::to_value(f).expect("failure serializes")),
            expected_generation: report.expected_generation,
            logs,
        };
        self.dispatch_apply(project, id, event, &caller.sub, outcome).await
    }

    /// Applies `event` through the state machine: one statement that moves
    /// the row only from a state the event allows, retried after a re-read
    /// when the row was not where the write expected it.
    pub async fn dispatch_apply(
        &self,
        project: Option<&str>,
        id: Uuid,
        event: Event,
        actor: &str,
        outcome: Outcome,
    ) -> Result<DispatchRow> {
        let mut change = Transition {
            dispatch_id: id,
            project: project.map(str::to_owned),
            moves: event.moves(),
            expected_generation: outcome.expected_generation,
            actor: actor.to_owned(),
            reason: outcome.reason,
            result: outcome.result,
            failure: outcome.failure,
            cancelled_by: (event == Event::Cancel).then(|| actor.to_owned()),
            logs: outcome.logs,
            log_limit: self.settings.call_logs.max_bytes_per_dispatch as i64,
        };
        loop {
            // In its own task, so a client going away cannot interrupt the write.
            let db = self.db.clone();
            let attempt = change.clone();
            let written = tokio::spawn(async move { db.dispatch_transition(&attempt).await })
                .await
                .map_err(|e| Error::Internal(e.into()))??;
            if let Some(row) = written {
                if !change.logs.is_empty() {
                    self.logs_changed(id);
                }
                self.dispatch_changed(&row);
                if row.state == DispatchState::Queued {
                    self.placement_wanted(&row.cluster);
                } else if row.state.is_terminal() {
                    self.slot_freed(&row.cluster);
                }
                return Ok(row);
            }
            // Nothing was written: find out why from the row as it is now.
            let row = self.db.dispatch_get(project, id).await?.ok_or_else(|| not_found(id))?;
            if let Some(expected) = outcome.expected_generation {
                if expected != row.generation {
                    return Err(Error::StaleGeneration { expected, actual: row.generation });
                }
            }
            let stay = matches!(row.state.next(event)?, Next::Stay);
            // Output that did not go with the change (the change is a no-op,
            // the output may not fit the log limit, or the row moved) is
            // stored the slow way, which truncates.
            self.logs_store(id, std::mem::take(&mut change.logs)).await?;
            if stay {
                // Already applied: a re-sent report, a repeated cancel.
                return Ok(row);
            }
            // Another writer moved the row between our write and our read: decide again.
        }
    }

    /// Waits until the dispatch is terminal or `timeout_s` passes, then returns it.
    pub async fn dispatch_wait(&self, caller: &Caller, id: Uuid, timeout_s: Option<u32>) -> Result<DispatchRow> {
        let max_wait_s = self.settings.http.max_wait_s;
        let timeout_s = timeout_s.unwrap_or(DEFAULT_WAIT_S.min(max_wait_s));
        if timeout_s > max_wait_s {
            return Err(Error::invalid("timeout_s", format!("`timeout_s` must be at most {max_wait_s}")));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_s.into());
        let mut subscription = self.notifier.subscribe(id);
        // Reads are boxed: a parked waiter then holds only its subscription
        // and timer, not the space of a query it is not running.
        let mut row = Box::pin(self.dispatch_get(caller, id)).await?;
        loop {
            if row.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(row);
            }
            tokio::select! {
                pushed = subscription.changed() => {
                    row = match pushed {
                        // This replica wrote it: the row is in hand.
                        Some(pushed) if pushed.generation > row.generation => Arc::unwrap_or_clone(pushed),
                        Some(_) => row,
                        // A hint from elsewhere, or a reconnect: read it.
                        None => Box::pin(self.dispatch_get(caller, id)).await?,
                    };
                }
                _ = tokio::time::sleep_until(deadline) => return Box::pin(self.dispatch_get(caller, id)).await,
                _ = self.shutdown.cancelled() => return Ok(row),
            }
        }
    }
}

/// Where a create resolves to: explicit fields, or a registered function's.
struct Target {
    function: String,
    bundle: Option<String>,
    requirements: Vec<String>,
    cluster: String,
}

impl App {
    async fn dispatch_target(&self, caller: &Caller, req: &wire::CreateDispatch) -> Result<Target> {
        let registered = match &req.function_name {
            None => None,
            Some(name) => Some(self.db.function_get(&caller.project, name).await?.ok_or_else(|| {
                Error::invalid(
                    "function_name",
                    format!("no function named `{name}` in this project; register it with POST /v1/functions"),
                )
            })?),
        };
        let function = match (&req.function, &registered) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("function", "give `function` or `function_name`, not both"));
            }
            (Some(function), None) => function.clone(),
            (None, Some(registered)) => registered.function_ref.clone(),
            (None, None) => {
                return Err(Error::invalid(
                    "function",
                    "missing field `function` (`module:qualname`); or name a registered function with `function_name`",
                ));
            }
        };
        let cluster = req
            .cluster
            .clone()
            .or_else(|| registered.as_ref().and_then(|r| r.cluster.clone()))
            .ok_or_else(|| Error::invalid("cluster", "missing field `cluster`: name the cluster to run on"))?;
        let bundle = req.bundle.clone().or_else(|| registered.as_ref().and_then(|r| r.bundle.clone()));
        if let Some(sha) = &bundle {
            if !self.bundle_exists(sha).await? {
                return Err(Error::invalid(
                    "bundle",
                    format!("no bundle with sha256 `{sha}`; upload it first with POST /v1/bundles"),
                ));
            }
        }
        let requirements = if req.requirements.is_empty() {
            registered.as_ref().and_then(|r| serde_json::from_value(r.requirements.clone()).ok()).unwrap_or_default()
        } else {
            req.requirements.clone()
        };
        Ok(Target { function, bundle, requirements, cluster })
    }
}

pub(crate) fn not_found(id: Uuid) -> Error {
    Error::NotFound { kind: "dispatch", id: id.to_string() }
}

fn cursor_encode(id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn cursor_decode(cursor: &str) -> Result<Uuid> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| {
            Error::invalid("cursor", "`cursor` is not a cursor this API returned; pass `next_cursor` unchanged")
        })
}

/// A hash of everything in the request that defines the call, so a retry with
/// the same idempotency key can be told from a conflicting reuse.
fn request_hash(req: &wire::CreateDispatch) -> String {
    // serde_json's map sorts keys, so the encoding is canonical.
    let canonical = serde_json::json!({
        "function": req.function,
        "function_name": req.function_name,
        "bundle": req.bundle,
        "requirements": req.requirements,
        "args": req.args,
        "kwargs": req.kwargs,
        "cluster": req.cluster,
        "labels": req.labels,
        "timeout_s": req.timeout_s,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn validate_create(req: &wire::CreateDispatch, target: &Target) -> Result<()> {
    if !is_function_ref(&target.function) {
        return Err(Error::invalid(
            "function",
            format!("`function` must be `module:qualname`, e.g. `pipeline.train:fit`; got `{}`", target.function),
        ));
    }
    validate_cluster(&target.cluster)?;
    validate_requirements(&target.requirements)?;
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > 255 {
            return Err(Error::invalid("idempotency_key", "`idempotency_key` must be 1 to 255 characters"));
        }
    }
    validate_labels(&req.labels)?;
    if req.timeout_s == Some(0) {
        return Err(Error::invalid("timeout_s", "`timeout_s` must be at least 1 (omit it for no timeout)"));
    }
    Ok(())
}

/// A cluster name is 1 to 128 characters with no whitespace.
pub(crate) fn validate_cluster(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace) {
        return Err(Error::invalid("cluster", "`cluster` must be 1 to 128 characters with no spaces"));
    }
    Ok(())
}

pub(crate) fn validate_requirements(requirements: &[String]) -> Result<()> {
    if requirements.len() > 200 {
        return Err(Error::invalid("requirements", "at most 200 requirements are allowed"));
    }
    if let Some(bad) = requirements.iter().find(|r| r.trim().is_empty() || r.starts_with('-') || r.contains('\n')) {
        return Err(Error::invalid(
            "requirements",
            format!("`{bad}` is not a requirement specifier (e.g. `numpy==2.1.0`); pip options are not accepted"),
        ));
    }
    Ok(())
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid("labels", format!("at most {MAX_LABELS} labels are allowed")));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > 128 {
            return Err(Error::invalid("labels", format!("label key `{key}` must be 1 to 128 characters")));
        }
        if value.len() > 1024 {
            return Err(Error::invalid("labels", format!("label `{key}` is longer than 1024 characters")));
        }
    }
    Ok(())
}

/// `module.path:Qual.name`, each part a Python identifier.
pub(crate) fn is_function_ref(text: &str) -> bool {
    let is_dotted = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                let mut chars = part.chars();
                chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
                    && chars.all(|c| c == '_' || c.is_alphanumeric())
            })
    };
    matches!(text.split_once(':'), Some((module, qualname)) if is_dotted(module) && is_dotted(qualname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_references_must_be_module_colon_qualname() {
        assert!(is_function_ref("pipeline.train:fit"));
        assert!(is_function_ref("m:Model.predict"));
        assert!(!is_function_ref("pipeline.train"));
        assert!(!is_function_ref(":fit"));
        assert!(!is_function_ref("a..b:c"));
        assert!(!is_function_ref("1abc:f"));
        assert!(!is_function_ref("a:b:c"));
    }

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        assert_eq!(cursor_decode(&cursor_encode(id)).unwrap(), id);
        assert!(matches!(cursor_decode("not-a-cursor"), Err(Error::InvalidField { field, .. }) if field == "cursor"));
    }

    #[test]
    fn the_request_hash_ignores_the_idempotency_key_and_key_order() {
        let mut a: wire::CreateDispatch = serde_json::from_value(serde_json::json!({
            "function": "m:f", "cluster": "c", "kwargs": {"a": 1, "b": 2}
        }))
        .unwrap();
        let b: wire::CreateDispatch = serde_json::from_value(serde_json::json!({
            "function": "m:f", "cluster": "c", "kwargs": {"b": 2, "a": 1}
        }))
        .unwrap();
        a.idempotency_key = Some("k".into());
        assert_eq!(request_hash(&a), request_hash(&b));
    }
}
