//! Remote objects (`/v1/instances`): a class constructed once on a node,
//! whose methods are dispatches.
//!
//! The constructor is a dispatch like any other (placed on a node slot, its
//! output and failure recorded), and the object follows it by a trigger (see
//! `migrations/0009_instances.sql`). Everything else an object goes through
//! is a compare-and-set on its generation, so replicas may race on any of it.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::dispatch::{validate_name, validate_requirements, Actor, Created, Outcome, MAX_FUNCTION_REF};
use super::App;
use crate::auth::Caller;
use crate::db::{DispatchRow, NewDispatch, NewObject, ObjectEventRow, ObjectRow, ObjectState};
use crate::dispatch::{DispatchState, Event};
use crate::{Error, Result};

/// Method calls an object runs at once unless its creator says otherwise.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 8;
/// Events shown with an object.
const EVENTS_SHOWN: i64 = 50;
/// A ready object its node does not list for this long is lost (its worker died).
const UNLISTED_GRACE_S: i64 = 10;

impl App {
    /// Creates an object and starts its constructor, or returns the live one
    /// of that name if it was created with the same arguments (attach).
    pub async fn object_create(&self, caller: &Caller, req: wire::CreateInstance) -> Result<(ObjectRow, Created)> {
        validate_name("name", &req.name)?;
        if !super::dispatch::is_function_ref(&req.class) || req.class.len() > MAX_FUNCTION_REF {
            return Err(Error::invalid(
                "class",
                format!("`class` must be `module:Qualname`, e.g. `my_project.train:Trainer`; got `{}`", req.class),
            ));
        }
        validate_requirements(&req.requirements)?;
        let max_concurrency = req.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY);
        if !(1..=256).contains(&max_concurrency) {
            return Err(Error::invalid("max_concurrency", "`max_concurrency` must be 1 to 256"));
        }
        if let Some(minutes) = req.idle_stop_minutes {
            if !(minutes > 0.0 && minutes <= 10080.0) {
                return Err(Error::invalid(
                    "idle_stop_minutes",
                    "`idle_stop_minutes` must be more than 0 and at most 10080 (a week)",
                ));
            }
        }
        let cluster = self.cluster_for_dispatch(caller, &req.cluster).await?;
        if let Some(sha) = &req.bundle {
            if !self.bundle_held(&caller.project, sha).await? {
                return Err(Error::invalid(
                    "bundle",
                    format!("this project has no bundle with sha256 `{sha}`; upload it first with POST /v1/bundles"),
                ));
            }
        }
        if cluster.project == caller.project {
            self.cluster_ensure_for_dispatch(&cluster, &caller.sub).await?;
        }
        let new = NewObject {
            object_id: Uuid::now_v7(),
            project: caller.project.clone(),
            name: req.name.clone(),
            class_ref: req.class.clone(),
            bundle: req.bundle.clone(),
            requirements: json!(req.requirements),
            init_args: Value::Array(req.args.clone()),
            init_kwargs: Value::Object(req.kwargs.clone()),
            cluster: cluster.name.clone(),
            cluster_project: cluster.project.clone(),
            max_concurrency: max_concurrency as i32,
            idle_stop_minutes: req.idle_stop_minutes,
            restart: req.restart.as_str().to_owned(),
            created_by: caller.sub.clone(),
        };
        match self.db.object_insert(&new).await? {
            Some(row) => {
                self.object_construct(&row).await?;
                let row = self.db.object_get(row.object_id).await?.unwrap_or(row);
                Ok((row, Created::New))
            }
            None => {
                let existing = self.db.object_by_name(&caller.project, &req.name).await?;
                let existing = existing
                    .filter(|o| o.state != ObjectState::Deleted)
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!("object name conflict without a live object")))?;
                let same = existing.class_ref == new.class_ref
                    && existing.bundle == new.bundle
                    && existing.requirements == new.requirements
                    && existing.init_args == new.init_args
                    && existing.init_kwargs == new.init_kwargs
                    && existing.cluster == new.cluster
                    && existing.cluster_project == new.cluster_project
                    && existing.max_concurrency == new.max_concurrency
                    && existing.idle_stop_minutes == new.idle_stop_minutes
                    && existing.restart == new.restart;
                if !same {
                    return Err(Error::ObjectExists { name: req.name, state: existing.state.as_str() });
                }
                Ok((existing, Created::Existing))
            }
        }
    }

    /// One object of the caller's project (the live one, else the latest deleted one) and its latest events.
    pub async fn object_get(&self, caller: &Caller, name: &str) -> Result<(ObjectRow, Vec<ObjectEventRow>)> {
        let row = self.db.object_by_name(&caller.project, name).await?.ok_or_else(|| not_found(name))?;
        let events = self.db.object_events(row.object_id, EVENTS_SHOWN).await?;
        Ok((row, events))
    }

    /// The project's live objects (with `all`, deleted ones too).
    pub async fn object_list(&self, caller: &Caller, all: bool) -> Result<Vec<ObjectRow>> {
        self.db.object_list(&caller.project, all).await
    }

    /// Deletes an object: its queued and running calls are cancelled, its
    /// constructor too if it is still starting, and its worker is stopped.
    pub async fn object_delete(&self, caller: &Caller, name: &str) -> Result<ObjectRow> {
        loop {
            let row = self.db.object_by_name(&caller.project, name).await?.ok_or_else(|| not_found(name))?;
            if row.state == ObjectState::Deleted {
                return Ok(row);
            }
            let message = format!("deleted by {}", caller.sub);
            let Some(deleted) = self
                .db
                .object_transition(
                    row.object_id,
                    row.generation,
                    ObjectState::Deleted,
                    Some(&message),
                    "deleted",
                    &message,
                )
                .await?
            else {
                continue; // it moved meanwhile: decide again
            };
            self.object_end_calls(&deleted, &format!("instance {name} was deleted")).await?;
            self.object_stop_on_node(&deleted);
            tracing::info!(instance = %name, by = %caller.sub, "instance deleted");
            return Ok(deleted);
        }
    }

    /// The object a method call names, ready to take it: starting (the call
    /// waits for the constructor) or ready. A lost object with
    /// `restart: on_lost` is constructed again first.
    pub(crate) async fn object_for_call(&self, caller: &Caller, name: &str) -> Result<ObjectRow> {
        loop {
            let row = self.db.object_by_name(&caller.project, name).await?.ok_or_else(|| {
                Error::invalid(
                    "instance",
                    format!("no instance named `{name}` in this project; create it with POST /v1/instances"),
                )
            })?;
            match row.state {
                ObjectState::Starting | ObjectState::Ready => return Ok(row),
                ObjectState::Lost if row.restart == "on_lost" => {
                    if let Some(restarted) = self.object_restart(&row, &caller.sub).await? {
                        return Ok(restarted);
                    }
                    // Another call restarted it meanwhile: look again.
                }
                state => {
                    return Err(Error::ObjectUnavailable {
                        name: name.to_owned(),
                        state: state.as_str(),
                        reason: row.state_reason.unwrap_or_default(),
                    })
                }
            }
        }
    }

    /// Constructs a lost object again. `None` if another writer moved it first.
    async fn object_restart(&self, row: &ObjectRow, by: &str) -> Result<Option<ObjectRow>> {
        let message = format!("constructed again (restart: on_lost) for a call by {by}");
        let Some(restarted) = self
            .db
            .object_transition(row.object_id, row.generation, ObjectState::Starting, None, "restarted", &message)
            .await?
        else {
            return Ok(None);
        };
        tracing::info!(instance = %row.name, restarts = restarted.restarts, "restarting a lost instance");
        self.object_construct(&restarted).await?;
        Ok(Some(restarted))
    }

    /// Records the constructor dispatch of the object's current life (its
    /// idempotency key is derived from the object and its restart count, so
    /// repeating this makes no second one) and places it.
    async fn object_construct(&self, row: &ObjectRow) -> Result<DispatchRow> {
        let key = format!("instance:{}:{}", row.object_id, row.restarts);
        let new = NewDispatch {
            dispatch_id: Uuid::now_v7(),
            project: row.project.clone(),
            function_ref: row.class_ref.clone(),
            function_name: None,
            bundle: row.bundle.clone(),
            requirements: row.requirements.clone(),
            args: row.init_args.clone(),
            kwargs: row.init_kwargs.clone(),
            cluster: row.cluster.clone(),
            cluster_project: row.cluster_project.clone(),
            request_hash: hex::encode(Sha256::digest(key.as_bytes())),
            idempotency_key: Some(key),
            requester: row.created_by.clone(),
            labels: json!({"instance": row.name, "instance_role": "constructor"}),
            timeout_s: None,
            object_id: Some(row.object_id),
            method: None,
            cache_key: None,
        };
        let (dispatch, _) = self.dispatch_insert(new).await?;
        self.db.object_set_constructor(row.object_id, row.restarts, dispatch.dispatch_id).await?;
        Ok(dispatch)
    }

    /// Cancels every queued or running call of an object (and its constructor).
    async fn object_end_calls(&self, row: &ObjectRow, reason: &str) -> Result<()> {
        let active = [DispatchState::Queued, DispatchState::Running];
        // Calls created after this read find the object deleted; the object
        // step fails any that slipped into the queue meanwhile.
        for call in self.db.dispatch_of_object(row.object_id, &active, 10_000).await? {
            let outcome = Outcome { reason: Some(reason.to_owned()), ..Outcome::default() };
            // A call that ended meanwhile is left as it ended.
            let _ = self.dispatch_apply(Actor::Gateway, call.dispatch_id, Event::Cancel, outcome).await;
        }
        Ok(())
    }

    /// Tells the object's node to stop its worker (best effort: the node's
    /// heartbeat lists what it hosts, and the gateway repeats this then).
    pub(crate) fn object_stop_on_node(&self, row: &ObjectRow) {
        let Some(node_id) = row.node_id else { return };
        let (app, object_id) = (self.clone(), row.object_id);
        tokio::spawn(async move { app.object_stop(node_id, object_id).await });
    }

    async fn object_stop(&self, node_id: Uuid, object_id: Uuid) {
        let node = match self.db.node_get(node_id).await {
            Ok(Some(node)) => node,
            _ => return,
        };
        if let Err(err) = self.nodes.stop_instance(&(&node).into(), object_id).await {
            tracing::debug!(%object_id, node = %node.name, error = %err, "instance stop not delivered; the next heartbeat repeats it");
        }
    }

    /// What a node's heartbeat says of the objects it hosts: it stops those
    /// no longer live there, and a ready one it has not listed for a while
    /// (its worker died) is lost.
    pub(crate) async fn object_heartbeat(&self, node_id: Uuid, node_name: &str, listed: &[Uuid]) -> Result<()> {
        for stale in self.db.objects_not_live_on(node_id, listed).await? {
            let app = self.clone();
            tokio::spawn(async move { app.object_stop(node_id, stale).await });
        }
        let now = chrono::Utc::now();
        for row in self.db.objects_on_node(node_id).await? {
            let settled = row.ready_at.is_some_and(|at| now - at > chrono::Duration::seconds(UNLISTED_GRACE_S));
            if row.state == ObjectState::Ready && settled && !listed.contains(&row.object_id) {
                let message = format!("its worker on node {node_name} is gone");
                self.db
                    .object_transition(
                        row.object_id,
                        row.generation,
                        ObjectState::Lost,
                        Some(&message),
                        "lost",
                        &message,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// One pass of the object step: constructors a gateway died before
    /// recording, calls queued for objects that cannot run them (failed
    /// with the object's state, or the object is constructed again), and
    /// objects idle past their limit (stopped: `lost`). Every change is a
    /// compare-and-set, so any number of replicas may run this at once.
    pub async fn object_step(&self) -> Result<Value> {
        let (mut constructed, mut failed, mut restarted, mut stopped) = (0, 0, 0, 0);
        for row in self.db.objects_without_constructor().await? {
            self.object_construct(&row).await?;
            constructed += 1;
        }
        for row in self.db.objects_ended_with_queued().await? {
            if row.state == ObjectState::Lost && row.restart == "on_lost" {
                if self.object_restart(&row, "a queued call").await?.is_some() {
                    restarted += 1;
                }
                continue;
            }
            let (code, message) = match row.state {
                ObjectState::Failed => {
                    ("instance_failed", format!("instance {} failed: {}", row.name, reason_of(&row)))
                }
                ObjectState::Lost => ("instance_lost", format!("instance {} was lost: {}", row.name, reason_of(&row))),
                _ => ("instance_deleted", format!("instance {} was deleted", row.name)),
            };
            for call in self.db.dispatch_of_object(row.object_id, &[DispatchState::Queued], 256).await? {
                let outcome = Outcome::failed(code, &message);
                if self.dispatch_apply(Actor::Gateway, call.dispatch_id, Event::Fail, outcome).await.is_ok() {
                    failed += 1;
                }
            }
        }
        for row in self.db.objects_idle().await? {
            let minutes = row.idle_stop_minutes.unwrap_or_default();
            let message = format!("stopped after {minutes} idle minutes (idle_stop_minutes)");
            if let Some(stopped_row) = self
                .db
                .object_transition(
                    row.object_id,
                    row.generation,
                    ObjectState::Lost,
                    Some(&message),
                    "idle_stopped",
                    &message,
                )
                .await?
            {
                tracing::info!(instance = %row.name, "instance stopped for being idle");
                self.object_stop_on_node(&stopped_row);
                // Its cluster may be idle now.
                self.provisioner.notify_one();
                stopped += 1;
            }
        }
        Ok(
            json!({ "constructed": constructed, "calls_failed": failed, "restarted": restarted, "idle_stopped": stopped }),
        )
    }
}

fn reason_of(row: &ObjectRow) -> String {
    row.state_reason.clone().unwrap_or_else(|| row.state.as_str().to_owned())
}

fn not_found(name: &str) -> Error {
    Error::NotFound { kind: "instance", id: name.to_owned() }
}

/// A method name: a Python identifier that is not a dunder.
pub(crate) fn validate_method(method: &str) -> Result<()> {
    let mut chars = method.chars();
    let identifier = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && method.len() <= 255;
    if !identifier || (method.starts_with("__") && method.ends_with("__")) {
        return Err(Error::invalid(
            "method",
            format!("`method` must name a method of the instance's class (a Python identifier, not a dunder); got `{method}`"),
        ));
    }
    Ok(())
}
