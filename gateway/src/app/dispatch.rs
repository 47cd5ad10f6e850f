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
use crate::db::{ClusterKey, DispatchRow, EventRow, ListFilter, LogStream, NewDispatch, Transition};
use crate::dispatch::{DispatchState, Event, Next};
use crate::{Error, Result};

const MAX_LABELS: usize = 64;
/// Longest `module:qualname` accepted.
pub(crate) const MAX_FUNCTION_REF: usize = 512;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
const DEFAULT_WAIT_S: u32 = 30;
/// Longest cancel reason accepted.
const MAX_REASON: usize = 4096;

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
        let failure = failure_of(code, message);
        Outcome {
            reason: Some(message.into()),
            failure: Some(serde_json::to_value(failure).expect("failure serializes")),
            ..Outcome::default()
        }
    }
}

/// Who changes a dispatch, which decides what it may touch and what the
/// event log records.
#[derive(Debug, Clone)]
pub enum Actor<'a> {
    /// The gateway itself (placement, repairs, provisioning): any dispatch.
    Gateway,
    /// A user or operator: only their project's dispatches.
    User(&'a Caller),
    /// A node: only the dispatches placed on it.
    Node { id: Uuid, sub: &'a str },
}

impl Actor<'_> {
    fn project(&self) -> Option<&str> {
        match self {
            Actor::User(caller) => Some(&caller.project),
            _ => None,
        }
    }

    fn node(&self) -> Option<Uuid> {
        match self {
            Actor::Node { id, .. } => Some(*id),
            _ => None,
        }
    }

    fn name(&self) -> String {
        match self {
            Actor::Gateway => "gateway".to_owned(),
            Actor::User(caller) => caller.sub.clone(),
            Actor::Node { sub, .. } => (*sub).to_owned(),
        }
    }
}

/// A failure body with `code` and `message`.
pub(crate) fn failure_of(code: &str, message: &str) -> wire::DispatchFailure {
    wire::DispatchFailure::new(code, message)
}

/// Free text a node sent, made storable as Postgres `text` (a NUL shows as `\0`).
fn storable_text(text: &str) -> String {
    text.replace('\0', "\\0")
}

impl App {
    /// Records a new dispatch, or returns the one this idempotency key already made.
    ///
    /// With `wait_s`, the answer is held until the dispatch ends or that many
    /// seconds pass (as `GET /v1/dispatches/{id}/wait` would hold it), so a
    /// short call takes one request. The wait starts listening before the
    /// insert, so it needs no read of the row it just wrote.
    pub async fn dispatch_create(
        &self,
        caller: &Caller,
        req: wire::CreateDispatch,
        wait_s: Option<u32>,
    ) -> Result<(DispatchRow, Created)> {
        let deadline = wait_s.map(|s| self.wait_deadline("wait_s", s)).transpose()?;
        let request_hash = request_hash(&req);
        let target = self.dispatch_target(caller, &req).await?;
        validate_create(&req, &target)?;
        if target.cluster.project == caller.project && target.object.is_none() {
            self.cluster_ensure_for_dispatch(&target.cluster, &caller.sub).await?;
        }
        let mut labels = req.labels;
        if let Some(object) = &target.object {
            labels.insert("instance".into(), object.name.clone());
        }
        let (object_id, method) = target.object.map(|o| (o.id, o.method)).unzip();
        let cache_key = if req.cache || req.cache_key.is_some() {
            if object_id.is_some() {
                return Err(Error::invalid("cache", "a method call reads its instance's state: it cannot be cached"));
            }
            Some(match &req.cache_key {
                Some(key) if key.is_empty() || key.len() > 255 => {
                    return Err(Error::invalid("cache_key", "`cache_key` must be 1 to 255 characters"));
                }
                Some(key) => format!("key:{key}"),
                None => {
                    default_cache_key(&target.bundle, &target.function, &req.args, &req.kwargs, &target.requirements)
                }
            })
        } else {
            None
        };
        if req.cache_ttl_s == Some(0) {
            return Err(Error::invalid("cache_ttl_s", "`cache_ttl_s` must be at least 1 (omit it for any age)"));
        }
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
            cluster: target.cluster.name,
            cluster_project: target.cluster.project,
            idempotency_key: req.idempotency_key,
            requester: caller.sub.clone(),
            labels: serde_json::to_value(&labels).map_err(|e| Error::Internal(e.into()))?,
            timeout_s: req.timeout_s.map(|t| t as i32),
            object_id,
            method,
            cache_key,
        };
        let id = new.dispatch_id;
        let waiting = deadline.map(|deadline| (deadline, self.notifier.subscribe(id)));
        let (row, created) = match new.cache_key.clone() {
            Some(key) => self.dispatch_insert_cached(new, &key, req.cache_ttl_s).await?,
            None => self.dispatch_insert(new).await?,
        };
        let Some((deadline, mut subscription)) = waiting.filter(|_| !row.state.is_terminal()) else {
            return Ok((row, created));
        };
        // The dispatch is recorded: from here on a failure to read it must
        // not turn into an error (a client would create it again), so the
        // row in hand answers instead.
        let waited = if row.dispatch_id == id {
            // Ours, and listened to since before its insert: no change was missed.
            self.wait_for_end(caller, id, &mut subscription, row.generation, deadline).await
        } else {
            // An earlier dispatch (idempotency key, cache): listen from now on.
            drop(subscription);
            self.dispatch_wait_until(caller, row.dispatch_id, deadline).await.map(Some)
        };
        let ended = match waited {
            Ok(Some(ended)) => Some(ended),
            Ok(None) => Box::pin(self.dispatch_get(caller, row.dispatch_id)).await.ok(),
            Err(err) => {
                tracing::warn!(dispatch_id = %row.dispatch_id, error = %err, "waiting on a created dispatch failed; answering with its row");
                None
            }
        };
        Ok((ended.unwrap_or(row), created))
    }

    /// A create that asked for caching. Under a lock on (project, key): a
    /// recent enough succeeded dispatch with the key answers at once; else
    /// one still running with it is waited for; else this one runs.
    async fn dispatch_insert_cached(
        &self,
        new: NewDispatch,
        key: &str,
        ttl_s: Option<u32>,
    ) -> Result<(DispatchRow, Created)> {
        if let Some(idempotency_key) = &new.idempotency_key {
            if let Some(existing) = self.db.dispatch_by_idempotency_key(&new.project, idempotency_key).await? {
                if existing.request_hash != new.request_hash {
                    return Err(Error::IdempotencyConflict { key: idempotency_key.clone() });
                }
                return Ok((existing, Created::Existing));
            }
        }
        // Creates of one key take turns here first, so waiting on the
        // database's lock takes one connection per key, not one per request.
        let local = self.cache_locks.entry(format!("{}:{key}", new.project));
        let _local = local.lock().await;
        let mut held = self.db.cache_lock(&new.project, key).await?;
        let ttl = ttl_s.map(f64::from);
        let (from, result) = match held.hit(ttl).await? {
            Some(hit) => (hit.dispatch_id, Some(hit.result.unwrap_or(Value::Null))),
            None => match held.leader().await? {
                Some(leader) => (leader.dispatch_id, None),
                // Nothing to take from: run it (the lock is held until it is recorded).
                None => return self.dispatch_insert(new).await,
            },
        };
        let row = self
            .db
            .dispatch_insert_cached(&new, from, result.as_ref())
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("idempotency key conflict under the cache lock")))?;
        tracing::debug!(dispatch_id = %row.dispatch_id, cached_from = %from, state = %row.state, "answered from the cache");
        Ok((row, Created::New))
    }

    /// A cached dispatch ended: those waiting on it take its result if it
    /// succeeded; otherwise the oldest of them runs instead, the rest waiting on it.
    pub(crate) async fn cache_settle(&self, leader: &DispatchRow) -> Result<usize> {
        if leader.state == DispatchState::Succeeded {
            let followers = self.db.dispatch_followers(leader.dispatch_id).await?;
            for follower in &followers {
                let outcome = Outcome {
                    result: Some(leader.result.clone().unwrap_or(Value::Null)),
                    reason: Some(format!("result cached from dispatch {}", leader.dispatch_id)),
                    ..Outcome::default()
                };
                // A follower cancelled meanwhile stays cancelled.
                let _ = self.dispatch_apply(Actor::Gateway, follower.dispatch_id, Event::CacheHit, outcome).await;
            }
            return Ok(followers.len());
        }
        if let Some(promoted) = self.db.dispatch_promote_follower(leader.dispatch_id).await? {
            tracing::info!(leader = %leader.dispatch_id, %promoted, "a cached dispatch did not succeed; the next identical one runs");
            self.placement_wanted(leader.cluster_key());
            return Ok(1);
        }
        Ok(0)
    }

    /// Settles the followers of cached dispatches that ended while no gateway settled them.
    pub async fn cache_repair_step(&self) -> Result<serde_json::Value> {
        let mut settled = 0;
        for leader in self.db.dispatch_cache_leaders_ended().await? {
            if let Some(row) = self.db.dispatch_get(None, leader).await? {
                settled += self.cache_settle(&row).await?;
            }
        }
        Ok(serde_json::json!({ "settled": settled }))
    }

    /// Records `new` and places it (now, if a slot is free; else through the
    /// placement task), or returns the dispatch its idempotency key already made.
    pub(crate) async fn dispatch_insert(&self, new: NewDispatch) -> Result<(DispatchRow, Created)> {
        // The insert and everything that follows its commit run in their own
        // task: a client that disconnects mid-request can neither leave half a
        // write nor a committed dispatch that nobody forwards or places.
        let app = self.clone();
        let new_for_insert = new.clone();
        // Alone, or grouped with other creates waiting (see `group`).
        let inserted = tokio::spawn(async move {
            let inserted = app.creates.write(new_for_insert).await?;
            // Nobody can wait on a dispatch before its create returns: no one to wake.
            if let Some((row, node)) = &inserted {
                match node {
                    // Placed in the same commit: forwarded now, no placement pass needed.
                    Some(node) => app.dispatch_forward(row.clone(), node.clone()),
                    None => app.placement_wanted(row.cluster_key()),
                }
            }
            Ok::<_, Error>(inserted)
        })
        .await
        .map_err(|e| Error::Internal(e.into()))??;
        if let Some((row, _)) = inserted {
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

    /// Checks that `req` would make a dispatch for `caller` (a schedule's template), without recording one.
    pub(crate) async fn dispatch_validate(&self, caller: &Caller, req: &wire::CreateDispatch) -> Result<()> {
        let target = self.dispatch_target(caller, req).await?;
        validate_create(req, &target)
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
            function: query.function.filter(|f| !f.is_empty()),
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
        if let Some(reason) = &reason {
            if reason.len() > MAX_REASON {
                return Err(Error::invalid("reason", format!("`reason` must be at most {MAX_REASON} bytes")));
            }
        }
        let outcome = Outcome { reason, ..Outcome::default() };
        self.dispatch_apply(Actor::User(caller), id, Event::Cancel, outcome).await
    }

    /// Applies a node's report, and the output shipped with it. A node may
    /// report only on dispatches placed on it; an `admin` token of the
    /// dispatch's project may report too (an operator's override).
    ///
    /// A node's outcome is never lost to a refusal: a result over
    /// `results.max_bytes`, or one the database cannot store, fails the
    /// dispatch with a code saying so instead of leaving it running.
    pub async fn dispatch_report(&self, caller: &Caller, id: Uuid, report: wire::Report) -> Result<DispatchRow> {
        let node_id = match caller.node() {
            Some(binding) => Some(self.node_id_of(caller, binding).await?.ok_or_else(|| not_found(id))?),
            None if caller.has(Scope::Admin) => None,
            None => return Err(Error::MissingNodeCredential),
        };
        let actor = match node_id {
            Some(node_id) => Actor::Node { id: node_id, sub: &caller.sub },
            None => Actor::User(caller),
        };
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
                let failure = report
                    .failure
                    .clone()
                    .unwrap_or_else(|| wire::DispatchFailure::new("timed_out", "the call ran past its timeout_s"));
                (Event::TimeOut, Some(failure))
            }
        };
        if report.result.is_some() && event != Event::Succeed {
            return Err(Error::invalid("result", "`result` is only accepted with a `succeeded` report"));
        }
        let logs = super::logs::entries_checked(report.logs, "logs.seq")?;
        let max_result = self.settings.results.max_bytes;
        let result = (event == Event::Succeed).then(|| report.result.unwrap_or(Value::Null));
        let result_bytes = result.as_ref().map_or(0, |r| serde_json::to_vec(r).map_or(0, |v| v.len()));
        let (event, result, failure) = if result_bytes > max_result {
            let message = format!(
                "the result is {result_bytes} bytes of JSON, over this gateway's limit of {max_result} \
                 (results.max_bytes); return a path or URI to large data instead"
            );
            (Event::Fail, None, Some(failure_of("result_too_large", &message)))
        } else {
            (event, result, failure)
        };
        let outcome = Outcome {
            reason: report.reason.map(|r| storable_text(&r)),
            result,
            failure: failure.map(|f| serde_json::to_value(f).expect("failure serializes")),
            expected_generation: report.expected_generation,
            logs,
        };
        let applied = match self.dispatch_apply(actor.clone(), id, event, outcome).await {
            // The database refused what the node sent: the dispatch must still end.
            Err(Error::Internal(err)) if event.target().is_terminal() => {
                tracing::error!(dispatch_id = %id, error = ?err, "cannot store a node's outcome; failing the dispatch");
                let message = "the gateway could not store this call's outcome; see its log for this dispatch id";
                self.dispatch_apply(actor, id, Event::Fail, Outcome::failed("outcome_unstorable", message)).await
            }
            other => other,
        }?;
        if let (true, Some(object_id), Some(method)) = (report.abandoned, applied.object_id, &applied.method) {
            let how = if event == Event::TimeOut { "timed out" } else { "was cancelled" };
            let message = format!(
                "call {id} of `{method}` {how} but did not stop (blocked outside Python); its thread was left \
                 to finish and its result will be discarded"
            );
            self.db.object_event(object_id, "call_abandoned", &message).await?;
        }
        Ok(applied)
    }

    /// Applies `event` through the state machine: one statement that moves
    /// the row only from a state the event allows, retried after a re-read
    /// when the row was not where the write expected it.
    ///
    /// The write and everything that follows its commit (waking waiters,
    /// placement, sending a cancel to the node) run in their own task, so a
    /// client that goes away mid-request cannot cut any of it short.
    pub async fn dispatch_apply(
        &self,
        actor: Actor<'_>,
        id: Uuid,
        event: Event,
        outcome: Outcome,
    ) -> Result<DispatchRow> {
        let change = Transition {
            dispatch_id: id,
            project: actor.project().map(str::to_owned),
            node: actor.node(),
            moves: event.moves(),
            expected_generation: outcome.expected_generation,
            actor: actor.name(),
            reason: outcome.reason,
            result: outcome.result,
            failure: outcome.failure,
            cancelled_by: (event == Event::Cancel).then(|| actor.name()),
            logs: outcome.logs,
            log_limit: self.settings.call_logs.max_bytes_per_dispatch as i64,
        };
        tokio::spawn(self.clone().transition_until_settled(change, event))
            .await
            .map_err(|e| Error::Internal(e.into()))?
    }

    // Boxed (and so named `Send`): a cancel it sends can apply a transition in turn.
    fn transition_until_settled(
        self,
        mut change: Transition,
        event: Event,
    ) -> futures::future::BoxFuture<'static, Result<DispatchRow>> {
        Box::pin(async move {
            let id = change.dispatch_id;
            loop {
                if let Some(row) = self.transitions.write(change.clone()).await? {
                    if !change.logs.is_empty() {
                        self.logs_changed(id);
                    }
                    self.dispatch_changed(&row);
                    if row.state == DispatchState::Queued {
                        self.placement_wanted(row.cluster_key());
                    } else if row.state.is_terminal() {
                        self.slot_freed(&row.cluster_key());
                        if row.cache_key.is_some() && row.cached_from.is_none() {
                            let (app, row) = (self.clone(), row.clone());
                            tokio::spawn(async move {
                                if let Err(err) = app.cache_settle(&row).await {
                                    tracing::warn!(dispatch_id = %row.dispatch_id, error = %err, "cannot settle the dispatches waiting on this one; the cache step will");
                                }
                            });
                        }
                        if row.object_id.is_some() {
                            // An object slot freed, or a constructor made its object ready.
                            self.placement.notify_one();
                        }
                    } else if row.state == DispatchState::Cancelling && event == Event::Cancel {
                        let app = self.clone();
                        let row = row.clone();
                        tokio::spawn(async move { app.cancel_forward(&row).await });
                    }
                    return Ok(row);
                }
                // Nothing was written: find out why from the row as it is now.
                let row = self.db.dispatch_get(change.project.as_deref(), id).await?.ok_or_else(|| not_found(id))?;
                if change.node.is_some() && row.node_id != change.node {
                    return Err(not_found(id));
                }
                if let Some(expected) = change.expected_generation {
                    if expected != row.generation {
                        return Err(Error::StaleGeneration { expected, actual: row.generation });
                    }
                }
                let stay = matches!(row.state.next(event)?, Next::Stay);
                // Output that did not go with the change (the change is a no-op,
                // the output may not fit the log limit, or the row moved) is
                // stored the slow way, which truncates.
                self.logs_store(&row, std::mem::take(&mut change.logs)).await?;
                if stay {
                    // Already applied: a re-sent report, a repeated cancel.
                    return Ok(row);
                }
                // Another writer moved the row between our write and our read: decide again.
            }
        })
    }

    /// Waits until the dispatch is terminal or `timeout_s` passes, then returns it.
    pub async fn dispatch_wait(&self, caller: &Caller, id: Uuid, timeout_s: Option<u32>) -> Result<DispatchRow> {
        let max_wait_s = self.settings.http.max_wait_s;
        let deadline = self.wait_deadline("timeout_s", timeout_s.unwrap_or(DEFAULT_WAIT_S.min(max_wait_s)))?;
        self.dispatch_wait_until(caller, id, deadline).await
    }

    /// The instant a wait of `seconds` (the request's field `field`) ends; a
    /// wait longer than `http.max_wait_s` is refused.
    fn wait_deadline(&self, field: &str, seconds: u32) -> Result<tokio::time::Instant> {
        let max_wait_s = self.settings.http.max_wait_s;
        if seconds > max_wait_s {
            return Err(Error::invalid(field, format!("`{field}` must be at most {max_wait_s}")));
        }
        Ok(tokio::time::Instant::now() + Duration::from_secs(seconds.into()))
    }

    /// Dispatch `id` once it has ended, or as it is at `deadline`.
    async fn dispatch_wait_until(
        &self,
        caller: &Caller,
        id: Uuid,
        deadline: tokio::time::Instant,
    ) -> Result<DispatchRow> {
        let mut subscription = self.notifier.subscribe(id);
        // Reads are boxed: a parked waiter then holds only its subscription,
        // its timer and the generation it has seen, not the space of a query
        // it is not running nor the row (with the call's arguments) it read.
        let row = Box::pin(self.dispatch_get(caller, id)).await?;
        if row.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(row);
        }
        let seen = row.generation;
        drop(row);
        match self.wait_for_end(caller, id, &mut subscription, seen, deadline).await? {
            Some(ended) => Ok(ended),
            None => Box::pin(self.dispatch_get(caller, id)).await,
        }
    }

    /// Waits on `subscription` (made before generation `seen` was read) until
    /// dispatch `id` ends: its row then, or `None` at `deadline` or shutdown.
    async fn wait_for_end(
        &self,
        caller: &Caller,
        id: Uuid,
        subscription: &mut crate::notify::Subscription<Arc<DispatchRow>>,
        mut seen: i64,
        deadline: tokio::time::Instant,
    ) -> Result<Option<DispatchRow>> {
        loop {
            let row = tokio::select! {
                pushed = subscription.changed() => match pushed {
                    // This replica wrote it: the row is in hand.
                    Some(pushed) if pushed.generation > seen => Arc::unwrap_or_clone(pushed),
                    Some(_) => continue,
                    // A hint from elsewhere, or a reconnect: read it.
                    None => Box::pin(self.dispatch_get(caller, id)).await?,
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.shutdown.cancelled() => return Ok(None),
            };
            if row.state.is_terminal() {
                return Ok(Some(row));
            }
            seen = row.generation;
        }
    }
}

/// Where a create resolves to: explicit fields, or a registered function's.
struct Target {
    function: String,
    bundle: Option<String>,
    requirements: Vec<String>,
    cluster: ClusterKey,
    /// The object whose method is called.
    object: Option<ObjectTarget>,
}

struct ObjectTarget {
    id: Uuid,
    name: String,
    method: String,
}

impl App {
    /// The cluster a dispatch names: `name` (the caller's project's) or
    /// `owner/name`, a cluster another project shares with the caller's.
    pub(crate) async fn cluster_for_dispatch(&self, caller: &Caller, text: &str) -> Result<ClusterKey> {
        let key = parse_cluster_ref(&caller.project, text)?;
        if key.project != caller.project && !self.db.cluster_shared_with(&key, &caller.project).await? {
            return Err(Error::invalid(
                "cluster",
                format!("no live cluster `{text}` is shared with project `{}`", caller.project),
            ));
        }
        Ok(key)
    }

    async fn dispatch_target(&self, caller: &Caller, req: &wire::CreateDispatch) -> Result<Target> {
        if let Some(name) = &req.instance {
            let given = [
                ("function", req.function.is_some()),
                ("function_name", req.function_name.is_some()),
                ("bundle", req.bundle.is_some()),
                ("requirements", !req.requirements.is_empty()),
                ("cluster", req.cluster.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
                return Err(Error::invalid(
                    *field,
                    format!("a method call names `instance` and `method`, not `{field}`: the instance has its code and cluster"),
                ));
            }
            let method = req.method.clone().ok_or_else(|| {
                Error::invalid("method", "missing field `method`: the method of the instance to call")
            })?;
            super::object::validate_method(&method)?;
            let object = self.object_for_call(caller, name).await?;
            return Ok(Target {
                function: format!("{}.{method}", object.class_ref),
                bundle: object.bundle,
                requirements: serde_json::from_value(object.requirements).unwrap_or_default(),
                cluster: ClusterKey::new(&object.cluster_project, &object.cluster),
                object: Some(ObjectTarget { id: object.object_id, name: object.name, method }),
            });
        }
        if req.method.is_some() {
            return Err(Error::invalid("method", "`method` calls a method of an `instance`; name the instance too"));
        }
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
        let cluster = self.cluster_for_dispatch(caller, &cluster).await?;
        let bundle = req.bundle.clone().or_else(|| registered.as_ref().and_then(|r| r.bundle.clone()));
        if let Some(sha) = &bundle {
            if !self.bundle_held(&caller.project, sha).await? {
                return Err(Error::invalid(
                    "bundle",
                    format!("this project has no bundle with sha256 `{sha}`; upload it first with POST /v1/bundles"),
                ));
            }
        }
        let requirements = if req.requirements.is_empty() {
            registered.as_ref().and_then(|r| serde_json::from_value(r.requirements.clone()).ok()).unwrap_or_default()
        } else {
            req.requirements.clone()
        };
        Ok(Target { function, bundle, requirements, cluster, object: None })
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
/// The cache key a create gets unless it names one: what makes two calls the
/// same call. JSON objects are canonical (serde_json sorts their keys), so
/// keyword order does not matter.
fn default_cache_key(
    bundle: &Option<String>,
    function: &str,
    args: &[Value],
    kwargs: &serde_json::Map<String, Value>,
    requirements: &[String],
) -> String {
    let mut requirements = requirements.to_vec();
    requirements.sort();
    requirements.dedup();
    let canonical = serde_json::json!([bundle, function, args, kwargs, requirements]);
    format!("call:{}", hex::encode(Sha256::digest(canonical.to_string().as_bytes())))
}

fn request_hash(req: &wire::CreateDispatch) -> String {
    // serde_json's map sorts keys, so the encoding is canonical.
    let mut canonical = serde_json::json!({
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
    // Only when given, so requests from before method calls hash as they did.
    if req.instance.is_some() || req.method.is_some() {
        canonical["instance"] = serde_json::json!(req.instance);
        canonical["method"] = serde_json::json!(req.method);
    }
    if req.cache || req.cache_key.is_some() || req.cache_ttl_s.is_some() {
        canonical["cache"] = serde_json::json!([req.cache, req.cache_key, req.cache_ttl_s]);
    }
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn validate_create(req: &wire::CreateDispatch, target: &Target) -> Result<()> {
    let entry = wire::EntryPoint::parse(&target.function).map_err(|message| Error::invalid("function", message))?;
    match entry {
        wire::EntryPoint::Function { .. } if target.function.len() > MAX_FUNCTION_REF => {
            return Err(Error::invalid(
                "function",
                format!("`function` must be at most {MAX_FUNCTION_REF} characters"),
            ));
        }
        wire::EntryPoint::Function { .. } => {}
        _ if target.object.is_some() => {
            return Err(Error::invalid("function", "a method call names a method, not a program"));
        }
        wire::EntryPoint::Script { .. } | wire::EntryPoint::Shell { .. } => {
            if let Some(i) = req.args.iter().position(|a| !a.is_string()) {
                return Err(Error::invalid(
                    "args",
                    format!("a script's or command's `args` are its command line: strings only (args[{i}] is not)"),
                ));
            }
            if !req.kwargs.is_empty() {
                return Err(Error::invalid(
                    "kwargs",
                    "a script or command takes `args` (its command line), not `kwargs`",
                ));
            }
        }
        wire::EntryPoint::Notebook { .. } => {
            if !req.args.is_empty() {
                return Err(Error::invalid("args", "a notebook takes its parameters as `kwargs`, not `args`"));
            }
            if let Some(name) = req.kwargs.keys().find(|k| !wire::is_identifier(k)) {
                return Err(Error::invalid(
                    "kwargs",
                    format!(
                        "notebook parameter `{name}` is not a Python identifier; it becomes a variable of the notebook"
                    ),
                ));
            }
        }
    }
    validate_requirements(&target.requirements)?;
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > 255 {
            return Err(Error::invalid("idempotency_key", "`idempotency_key` must be 1 to 255 characters"));
        }
    }
    validate_labels(&req.labels)?;
    if let Some(timeout) = req.timeout_s {
        if !(1..=wire::MAX_TIMEOUT_S).contains(&timeout) {
            return Err(Error::invalid(
                "timeout_s",
                format!("`timeout_s` must be 1 to {} (omit it for no timeout)", wire::MAX_TIMEOUT_S),
            ));
        }
    }
    Ok(())
}

/// Checks a project, cluster or node name sent as `field`: one rule
/// ([`crate::auth::NAME_RULE`]) for every name, and the error names the field.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<()> {
    if !crate::auth::is_name(name) {
        return Err(Error::invalid(field, format!("`{field}` must be {}", crate::auth::NAME_RULE)));
    }
    Ok(())
}

/// A dispatch's `cluster`: `name` in `project`, or `owner/name`.
pub(crate) fn parse_cluster_ref(project: &str, text: &str) -> Result<ClusterKey> {
    let (owner, name) = text.split_once('/').unwrap_or((project, text));
    if !crate::auth::is_name(owner) || !crate::auth::is_name(name) {
        return Err(Error::invalid(
            "cluster",
            format!(
                "`cluster` must be a cluster name ({}), or `project/name` for a cluster another project shares",
                crate::auth::NAME_RULE
            ),
        ));
    }
    Ok(ClusterKey::new(owner, name))
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

pub(crate) use wire::is_function_ref;

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
