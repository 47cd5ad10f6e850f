//! Run records: what a call ran with (code, arguments, resolved packages,
//! interpreter, place), stored once when it starts so it can be run again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::dispatch::not_found;
use super::App;
use crate::auth::Caller;
use crate::db::ClusterKey;
use crate::{Error, Result};

/// Most packages a record keeps per list (a larger environment is cut, and says so).
const MAX_PACKAGES: usize = 5_000;

impl App {
    /// Stores the run record of a call the caller's node started: the
    /// node's part as sent, the rest from the dispatch, the node and the
    /// cluster as they are now. The first record of a dispatch stays.
    pub async fn record_store(&self, caller: &Caller, id: Uuid, info: wire::NodeRunInfo) -> Result<()> {
        let binding = caller.node().ok_or(Error::MissingNodeCredential)?;
        let node_id = self.node_id_of(caller, binding).await?.ok_or_else(|| not_found(id))?;
        let row = self.db.dispatch_get(None, id).await?.filter(|row| row.node_id == Some(node_id));
        let row = row.ok_or_else(|| not_found(id))?;
        if info.packages.len() > MAX_PACKAGES || info.base_packages.len() > MAX_PACKAGES {
            return Err(Error::invalid("packages", format!("at most {MAX_PACKAGES} packages per list")));
        }
        let node = self.db.node_get(node_id).await?.ok_or_else(|| not_found(id))?;
        let cluster = self.db.cluster_by_name(&ClusterKey::new(&row.cluster_project, &row.cluster)).await?;
        let spec: Option<wire::ClusterSpec> =
            cluster.as_ref().and_then(|c| serde_json::from_value(c.spec.clone()).ok());
        let args_hash = hex::encode(Sha256::digest(json!([row.args, row.kwargs]).to_string().as_bytes()));
        let place = wire::RecordPlace {
            node_id,
            node: node.name,
            cluster: row.cluster.clone(),
            provider: cluster.as_ref().map(|c| c.provider.clone()),
            instance_type: spec.and_then(|s| s.instance_type),
        };
        let record = Stored {
            bundle: row.bundle,
            function: row.function_ref,
            instance_id: row.object_id,
            method: row.method,
            args: serde_json::from_value(row.args).unwrap_or_default(),
            kwargs: serde_json::from_value(row.kwargs).unwrap_or_default(),
            args_hash,
            requirements: serde_json::from_value(row.requirements).unwrap_or_default(),
            run: info,
            place,
            recorded_at: chrono::Utc::now(),
        };
        let record = serde_json::to_value(record).map_err(|e| Error::Internal(e.into()))?;
        if self.db.record_insert(id, &record).await? {
            tracing::debug!(dispatch_id = %id, node = %caller.sub, "run record stored");
        }
        Ok(())
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
        Ok(wire::RunRecord {
            dispatch_id: wire::DispatchId(id),
            bundle: stored.bundle,
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
