//! Node daemons joining, heartbeating and reconciling with the gateway's view.

use std::collections::HashSet;

use uuid::Uuid;

use super::dispatch::{validate_cluster, Outcome};
use super::App;
use crate::auth::Caller;
use crate::db::{DispatchRow, NewNode, NodeRow};
use crate::dispatch::{DispatchState, Event};
use crate::node_client::CancelOutcome;
use crate::{Error, Result};

impl App {
    /// Registers (or re-registers) a node. Dispatches the gateway believes run
    /// on it but that it does not list were lost with its previous process:
    /// they fail with `node_lost`.
    pub async fn node_register(&self, caller: &Caller, req: wire::RegisterNode) -> Result<NodeRow> {
        if req.name.is_empty() || req.name.len() > 128 {
            return Err(Error::invalid("name", "`name` must be 1 to 128 characters"));
        }
        validate_cluster(&req.cluster)?;
        if !(req.address.starts_with("http://") || req.address.starts_with("https://")) {
            return Err(Error::invalid("address", "`address` must be an http:// or https:// URL"));
        }
        if req.api_secret.len() < 32 {
            return Err(Error::invalid("api_secret", "`api_secret` must be at least 32 characters"));
        }
        if req.max_concurrent == 0 || req.max_concurrent > 10_000 {
            return Err(Error::invalid("max_concurrent", "`max_concurrent` must be between 1 and 10000"));
        }
        let node = self
            .db
            .node_upsert(&NewNode {
                name: req.name,
                cluster: req.cluster,
                address: req.address,
                api_secret: req.api_secret,
                max_concurrent: req.max_concurrent as i32,
                resources: serde_json::to_value(&req.resources).map_err(|e| Error::Internal(e.into()))?,
                labels: serde_json::to_value(&req.labels).map_err(|e| Error::Internal(e.into()))?,
            })
            .await?;
        tracing::info!(node = %node.name, cluster = %node.cluster, actor = %caller.sub, "node registered");
        let still_running: HashSet<Uuid> = req.running.iter().map(|id| id.0).collect();
        for row in self.db.dispatch_active_on_node(node.node_id).await? {
            if !still_running.contains(&row.dispatch_id) {
                self.dispatch_fail_node_lost(&row, &format!("node {} restarted and no longer runs it", node.name))
                    .await;
            }
        }
        self.placement.notify_one();
        // A cluster waiting for this node can become ready now.
        self.provisioner.notify_one();
        Ok(node)
    }

    /// Records a heartbeat and repairs what pushes missed: a dispatch placed on
    /// the node that the node does not list (after a grace period) never
    /// reached it and is requeued; a cancelling one it does not list is done.
    pub async fn node_heartbeat(&self, node_id: Uuid, heartbeat: wire::Heartbeat) -> Result<NodeRow> {
        let node = self.db.node_heartbeat(node_id).await?.ok_or_else(|| Error::NotFound {
            kind: "ready node",
            id: format!("{node_id} (register again with POST /v1/nodes)"),
        })?;
        let listed: HashSet<Uuid> = heartbeat.running.iter().map(|id| id.0).collect();
        let grace = chrono::Duration::seconds(self.settings.nodes.unacknowledged_requeue_s.into());
        let now = chrono::Utc::now();
        for row in self.db.dispatch_active_on_node(node_id).await? {
            let placed_at = row.started_at.unwrap_or(row.updated_at);
            if listed.contains(&row.dispatch_id) || now - placed_at < grace {
                continue;
            }
            let (event, reason) = match row.state {
                DispatchState::Cancelling => (Event::CancelConfirmed, "the node no longer runs it"),
                _ => (Event::Requeue, "the node never acknowledged it"),
            };
            let outcome = Outcome { reason: Some(reason.into()), ..Outcome::default() };
            if let Err(err) = self.dispatch_apply(None, row.dispatch_id, event, "gateway", outcome).await {
                tracing::warn!(dispatch_id = %row.dispatch_id, error = %err, "heartbeat repair failed");
            }
        }
        if node.running < i64::from(node.max_concurrent) {
            self.placement.notify_one();
        }
        Ok(node)
    }

    /// Every node (admin).
    pub async fn node_list(&self) -> Result<Vec<NodeRow>> {
        self.db.node_list(None).await
    }

    /// Sends a cancel for a `cancelling` dispatch to its node. If the node does
    /// not know the call, the cancel is complete.
    pub async fn cancel_forward(&self, row: &DispatchRow) {
        let Some(node_id) = row.node_id else { return };
        let node = match self.db.node_get(node_id).await {
            Ok(Some(node)) => node,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot load node for a cancel");
                return;
            }
        };
        let cancel =
            wire::CancelCall { by: row.cancelled_by.clone().unwrap_or_default(), reason: row.cancel_reason.clone() };
        match self.nodes.cancel(&(&node).into(), row.dispatch_id, &cancel).await {
            Ok(CancelOutcome::Accepted) => {}
            Ok(CancelOutcome::UnknownCall) => {
                let outcome = Outcome { reason: Some("the node no longer runs it".into()), ..Outcome::default() };
                let _ = self.dispatch_apply(None, row.dispatch_id, Event::CancelConfirmed, "gateway", outcome).await;
            }
            Err(err) => {
                tracing::warn!(dispatch_id = %row.dispatch_id, node = %node.name, error = %err, "cancel not delivered; will retry")
            }
        }
    }

    /// Fails a dispatch whose node is gone.
    pub async fn dispatch_fail_node_lost(&self, row: &DispatchRow, message: &str) {
        let outcome = Outcome::failed("node_lost", message);
        if let Err(err) = self.dispatch_apply(None, row.dispatch_id, Event::Fail, "gateway", outcome).await {
            tracing::warn!(dispatch_id = %row.dispatch_id, error = %err, "cannot fail a dispatch of a lost node");
        }
    }
}
