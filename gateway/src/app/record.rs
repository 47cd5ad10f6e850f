//! Run records: what a call ran with (code, arguments, resolved packages,
//! interpreter, place), stored once when it starts so it can be run again.
//!
//! A record is three parts: the dispatch's own fields (function, arguments,
//! requirements; they never change), the environment the call ran in
//! (`run_environment`, stored once per distinct environment and named by its
//! digest), and what only the record knows (where the call ran and the
//! bundle's source at the time). Records written before environments were
//! shared (`environment` null) hold all of it by value; both read the same.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use std::collections::{HashMap, HashSet};

use super::App;
use crate::auth::Caller;
use crate::db::{ClusterKey, OnNodeRow};
use crate::{Error, Result};

/// Most packages a record keeps per list.
const MAX_PACKAGES: usize = 5_000;
/// Most records in one batch.
const MAX_BATCH: usize = 1_000;

impl App {
    /// Stores the run records of calls the caller's node started: each
    /// environment the batch names once (by its digest), and per call where
    /// it ran and the bundle's source as they are now, all in one statement.
    /// Items for dispatches not placed on this node are dropped; a
    /// dispatch's first record stays.
    pub async fn records_store(&self, caller: &Caller, batch: wire::RunRecordBatch) -> Result<usize> {
        let binding = caller.node().ok_or(Error::MissingNodeCredential)?;
        let Some(node_id) = self.node_id_of(caller, binding).await? else {
            return Err(Error::NotFound { kind: "node", id: binding.name.clone() });
        };
        if batch.items.len() > MAX_BATCH {
            return Err(Error::invalid("items", format!("at most {MAX_BATCH} records per batch")));
        }
        if batch.environments.len() > MAX_BATCH {
            return Err(Error::invalid("environments", format!("at most {MAX_BATCH} environments per batch")));
        }
        let environments = Environments::of(batch)?;
        let node = self
            .db
            .node_get(node_id)
            .await?
            .ok_or_else(|| Error::NotFound { kind: "node", id: node_id.to_string() })?;
        let ids: Vec<Uuid> = environments.items.iter().map(|(id, _)| id.0).collect();
        let rows: HashMap<Uuid, OnNodeRow> =
            self.db.dispatches_on_node(&ids, node_id).await?.into_iter().map(|r| (r.dispatch_id, r)).collect();
        let mut places: HashMap<ClusterKey, wire::RecordPlace> = HashMap::new();
        let mut sources: HashMap<(String, String), Option<wire::BundleSource>> = HashMap::new();
        let (mut record_ids, mut records, mut record_environments) = (Vec::new(), Vec::new(), Vec::new());
        for (dispatch_id, environment) in &environments.items {
            let Some(row) = rows.get(&dispatch_id.0) else { continue };
            let key = row.cluster_key();
            let place = match places.get(&key) {
                Some(place) => place.clone(),
                None => {
                    let cluster = self.db.cluster_by_name(&key).await?;
                    let spec: Option<wire::ClusterSpec> =
                        cluster.as_ref().and_then(|c| serde_json::from_value(c.spec.clone()).ok());
                    let place = wire::RecordPlace {
                        node_id,
                        node: node.name.clone(),
                        cluster: row.cluster.clone(),
                        provider: cluster.as_ref().map(|c| c.provider.clone()),
                        instance_type: spec.and_then(|s| s.instance_type),
                    };
                    places.insert(key, place.clone());
                    place
                }
            };
            let source = match &row.bundle {
                Some(sha) => match sources.get(&(row.project.clone(), sha.clone())) {
                    Some(source) => source.clone(),
                    None => {
                        let source: Option<wire::BundleSource> = self
                            .db
                            .bundle_source(&row.project, sha)
                            .await?
                            .and_then(|s| serde_json::from_value(s).ok());
                        sources.insert((row.project.clone(), sha.clone()), source.clone());
                        source
                    }
                },
                None => None,
            };
            let record = Stored { source, place, recorded_at: chrono::Utc::now() };
            record_ids.push(row.dispatch_id);
            records.push(serde_json::to_value(record).map_err(|e| Error::Internal(e.into()))?);
            record_environments.push(environments.digests[*environment].clone());
        }
        let used: HashSet<&String> = record_environments.iter().collect();
        let (digests, infos): (Vec<String>, Vec<Value>) = environments
            .digests
            .iter()
            .zip(environments.infos)
            .filter(|(digest, _)| used.contains(digest))
            .map(|(digest, info)| (digest.clone(), info))
            .unzip();
        self.db.records_insert(&record_ids, &records, &record_environments, &digests, &infos).await
    }

    /// The run record of one of the caller's project's dispatches, with its
    /// state and timings as they are now. 404 until the call has started.
    pub async fn record_get(&self, caller: &Caller, id: Uuid) -> Result<wire::RunRecord> {
        let row = self.dispatch_get(caller, id).await?;
        let Some((stored, environment)) = self.db.record_get(id).await? else {
            return Err(Error::NotFound {
                kind: "run record",
                id: format!("{id} (it is written when the call starts on a node; the dispatch is {})", row.state),
            });
        };
        let internal = |e: serde_json::Error| Error::Internal(e.into());
        let stored = match environment {
            Some(info) => {
                let Stored { source, place, recorded_at } = serde_json::from_value(stored).map_err(internal)?;
                StoredWhole {
                    bundle: row.bundle.clone(),
                    source,
                    function: row.function_ref.clone(),
                    instance_id: row.object_id,
                    method: row.method.clone(),
                    args: serde_json::from_value(row.args.clone()).unwrap_or_default(),
                    kwargs: serde_json::from_value(row.kwargs.clone()).unwrap_or_default(),
                    args_hash: args_hash(&row.args, &row.kwargs),
                    requirements: serde_json::from_value(row.requirements.clone()).unwrap_or_default(),
                    run: serde_json::from_value(info).map_err(internal)?,
                    place,
                    recorded_at,
                }
            }
            None => serde_json::from_value(stored).map_err(internal)?,
        };
        let artifacts = self.db.artifact_list(id).await?.into_iter().map(Into::into).collect();
        Ok(wire::RunRecord {
            dispatch_id: wire::DispatchId(id),
            bundle: stored.bundle,
            source: stored.source,
            artifacts,
            function: stored.function,
            instance_id: stored.instance_id,
            method: stored.method,
            args: stored.args,
            kwargs: stored.kwargs,
            args_hash: stored.args_hash,
            requirements: stored.requirements,
            run: stored.run,
            place: stored.place,
            recorded_at: stored.recorded_at,
            state: row.state.into(),
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            failure: row.failure.and_then(|f| serde_json::from_value(f).ok()),
        })
    }
}

/// sha256 of the canonical JSON of `[args, kwargs]`.
fn args_hash(args: &Value, kwargs: &Value) -> String {
    hex::encode(Sha256::digest(json!([args, kwargs]).to_string().as_bytes()))
}

/// A batch's environments, each serialized and named by its digest, and its
/// items with the index of their environment.
struct Environments {
    digests: Vec<String>,
    infos: Vec<Value>,
    items: Vec<(wire::DispatchId, usize)>,
}

impl Environments {
    fn of(batch: wire::RunRecordBatch) -> Result<Environments> {
        let mut environments = Environments { digests: Vec::new(), infos: Vec::new(), items: Vec::new() };
        for info in batch.environments {
            environments.push(info)?;
        }
        let shared = environments.digests.len();
        for item in batch.items {
            let index = match (item.environment, item.run) {
                (Some(index), None) if (index as usize) < shared => index as usize,
                (Some(index), None) => {
                    return Err(Error::invalid(
                        "items.environment",
                        format!(
                            "dispatch {} names environment {index}, and the batch has {shared} (indexes start at 0)",
                            item.dispatch_id
                        ),
                    ))
                }
                (None, Some(run)) => environments.push(run)?,
                _ => {
                    return Err(Error::invalid(
                        "items",
                        format!(
                            "dispatch {}: give exactly one of `environment` (an index into `environments`) and `run`",
                            item.dispatch_id
                        ),
                    ))
                }
            };
            environments.items.push((item.dispatch_id, index));
        }
        Ok(environments)
    }

    /// Adds one environment; returns its index.
    fn push(&mut self, info: wire::NodeRunInfo) -> Result<usize> {
        if info.packages.len() > MAX_PACKAGES || info.base_packages.len() > MAX_PACKAGES {
            return Err(Error::invalid("environments.packages", format!("at most {MAX_PACKAGES} packages per list")));
        }
        // A `Value`'s objects are sorted by key, so the digest is of canonical JSON.
        let info = serde_json::to_value(&info).map_err(|e| Error::Internal(e.into()))?;
        let digest = hex::encode(Sha256::digest(info.to_string().as_bytes()));
        let index = match self.digests.iter().position(|d| *d == digest) {
            Some(index) => index,
            None => {
                self.digests.push(digest);
                self.infos.push(info);
                self.digests.len() - 1
            }
        };
        Ok(index)
    }
}

/// What `dispatch_record` holds for a record with a shared environment: the
/// parts neither the dispatch nor the environment has.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    source: Option<wire::BundleSource>,
    place: wire::RecordPlace,
    recorded_at: DateTime<Utc>,
}

/// What `dispatch_record` held before environments were shared (and what a
/// record reads as): every part by value.
#[derive(Deserialize)]
struct StoredWhole {
    bundle: Option<String>,
    #[serde(default)]
    source: Option<wire::BundleSource>,
    function: String,
    instance_id: Option<Uuid>,
    method: Option<String>,
    args: Vec<Value>,
    kwargs: serde_json::Map<String, Value>,
    args_hash: String,
    requirements: Vec<String>,
    run: wire::NodeRunInfo,
    place: wire::RecordPlace,
    recorded_at: DateTime<Utc>,
}
