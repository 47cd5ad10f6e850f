//! Run records: what a call ran with (code, arguments, resolved packages,
//! interpreter, place), stored once when it starts so it can be run again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use std::collections::HashMap;

use super::App;
use crate::auth::Caller;
use crate::db::{ClusterKey, DispatchRow};
use crate::{Error, Result};

/// Most packages a record keeps per list.
const MAX_PACKAGES: usize = 5_000;
/// Most records in one batch.
const MAX_BATCH: usize = 1_000;

impl App {
    /// Stores the run records of calls the caller's node started: the
    /// node's part as sent, the rest from the dispatch, the node and the
    /// cluster as they are now, all in one statement. Items for dispatches
    /// not placed on this node are dropped; a dispatch's first record stays.
    pub async fn records_store(&self, caller: &Caller, batch: wire::RunRecordBatch) -> Result<usize> {
        let binding = caller.node().ok_or(Error::MissingNodeCredential)?;
        let Some(node_id) = self.node_id_of(caller, binding).await? else {
            return Err(Error::NotFound { kind: "node", id: binding.name.clone() });
        };
        if batch.items.len() > MAX_BATCH {
            return Err(Error::invalid("items", format!("at most {MAX_BATCH} records per batch")));
        }
        if let Some(item) =
            batch.items.iter().find(|i| i.run.packages.len() > MAX_PACKAGES || i.run.base_packages.len() > MAX_PACKAGES)
        {
            return Err(Error::invalid(
                "items.run.packages",
                format!("at most {MAX_PACKAGES} packages per list (dispatch {})", item.dispatch_id),
            ));
        }
        let node = self
            .db
            .node_get(node_id)
            .await?
            .ok_or_else(|| Error::NotFound { kind: "node", id: node_id.to_string() })?;
        let ids: Vec<Uuid> = batch.items.iter().map(|i| i.dispatch_id.0).collect();
        let rows: HashMap<Uuid, DispatchRow> =
            self.db.dispatches_on_node(&ids, node_id).await?.into_iter().map(|r| (r.dispatch_id, r)).collect();
        let mut places: HashMap<ClusterKey, wire::RecordPlace> = HashMap::new();
        let mut sources: HashMap<(String, String), Option<wire::BundleSource>> = HashMap::new();
        let (mut record_ids, mut records) = (Vec::new(), Vec::new());
        for item in batch.items {
            let Some(row) = rows.get(&item.dispatch_id.0) else { continue };
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
            let args_hash = hex::encode(Sha256::digest(json!([row.args, row.kwargs]).to_string().as_bytes()));
            let record = Stored {
                bundle: row.bundle.clone(),
                source,
                function: row.function_ref.clone(),
                instance_id: row.object_id,
                method: row.method.clone(),
                args: serde_json::from_value(row.args.clone()).unwrap_or_default(),
                kwargs: serde_json::from_value(row.kwargs.clone()).unwrap_or_default(),
                args_hash,
                requirements: serde_json::from_value(row.requirements.clone()).unwrap_or_default(),
                run: item.run,
                place,
                recorded_at: chrono::Utc::now(),
            };
            record_ids.push(row.dispatch_id);
            records.push(serde_json::to_value(record).map_err(|e| Error::Internal(e.into()))?);
        }
        self.db.records_insert(&record_ids, &records).await
    }

    /// The run record of one of the caller's project's dispatches, with its
    /// state and timings as they are now. 404 until the call has started.
    pub async fn record_get(&self, caller: &Caller, id: Uuid) -> Result<wire::RunRecord> {
        let row = self.dispatch_get(caller, id).await?;
        let Some(stored) = self.db.record_get(id).await? else {
            return Err(Error::NotFound {
                kind: "run record",
                id: format!("{id} (it is written when the call starts on a node; the dispatch is {})", row.state),
            });
        };
        let stored: Stored = serde_json::from_value(stored).map_err(|e| Error::Internal(e.into()))?;
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

/// What `dispatch_record` holds: the record's parts that never change.
#[derive(Serialize, Deserialize)]
struct Stored {
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
