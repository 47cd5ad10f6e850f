//! Node daemons joining, heartbeating and reconciling with the gateway's view.
//!
//! Every route here takes a node credential, and a credential is one node:
//! it names the node's project, cluster and name, so a node can register,
//! heartbeat, report and download code only as itself.

use std::collections::HashSet;

use uuid::Uuid;

use super::dispatch::{validate_name, Actor, Outcome};
use super::App;
use crate::auth::{Caller, NodeBinding};
use crate::db::{ClusterKey, DispatchRow, HeartbeatView, NewNode, NodeKey, NodeRow};
use crate::dispatch::{DispatchState, Event};
use crate::node_client::CancelOutcome;
use crate::notify::Channel;
use crate::{Error, Result};

/// Longest node address accepted.
const MAX_ADDRESS: usize = 2048;

impl App {
    /// The node a node credential is, or a 403 for any other token.
    pub(crate) fn node_key(&self, caller: &Caller) -> Result<NodeKey> {
        let binding = caller.node().ok_or(Error::MissingNodeCredential)?;
        Ok(node_key(caller, binding))
    }

    /// The id of the node `binding` names (in the caller's project), once it
    /// has registered. Cached: node ids never change.
    pub(crate) async fn node_id_of(&self, caller: &Caller, binding: &NodeBinding) -> Result<Option<Uuid>> {
        let key = node_key(caller, binding);
        if let Some(id) = self.node_ids.lock().expect("node id lock poisoned").get(&key) {
            return Ok(Some(*id));
        }
        let id = self.db.node_id_of(&key).await?;
        if let Some(id) = id {
            self.node_ids.lock().expect("node id lock poisoned").insert(key, id);
        }
        Ok(id)
    }

    /// Registers (or re-registers) the caller's node. Dispatches the gateway
    /// believes run on it but that it does not list were lost with its
    /// previous process: they fail with `node_lost`.
    pub async fn node_register(&self, caller: &Caller, req: wire::RegisterNode) -> Result<NodeRow> {
        let me = self.node_key(caller)?;
        validate_name("cluster", &req.cluster)?;
        if !crate::auth::is_node_name(&req.name) {
            return Err(Error::invalid("name", format!("`name` must be {}", crate::auth::NODE_NAME_RULE)));
        }
        if req.cluster != me.cluster.name || req.name != me.name {
            return Err(Error::invalid(
                "name",
                format!(
                    "this node credential is for node `{}/{}`; register as that node, or get a credential for `{}/{}`",
                    me.cluster.name, me.name, req.cluster, req.name
                ),
            ));
        }
        // A machine of a cluster that is stopping or gone may still come up
        // (it was asked for before the stop): it must not join as ready.
        if let Some(cluster) = self.db.cluster_by_name(&me.cluster).await? {
            if !matches!(cluster.state, crate::db::ClusterState::Provisioning | crate::db::ClusterState::Ready) {
                return Err(Error::JoinRefused);
            }
        }
        let address_ok = (req.address.starts_with("http://") || req.address.starts_with("https://"))
            && req.address.len() <= MAX_ADDRESS
            && reqwest::Url::parse(&req.address).is_ok();
        if !address_ok {
            return Err(Error::invalid("address", "`address` must be an http:// or https:// URL"));
        }
        if req.api_secret.len() < 32 || req.api_secret.len() > 512 {
            return Err(Error::invalid("api_secret", "`api_secret` must be 32 to 512 characters"));
        }
        if req.max_concurrent == 0 || req.max_concurrent > 10_000 {
            return Err(Error::invalid("max_concurrent", "`max_concurrent` must be between 1 and 10000"));
        }
        if req.labels.len() > 64 || req.labels.iter().any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024) {
            return Err(Error::invalid("labels", "at most 64 labels, keys 1 to 128 and values up to 1024 characters"));
        }
        let node = self
            .db
            .node_upsert(&NewNode {
                project: me.cluster.project.clone(),
                name: req.name,
                cluster: req.cluster,
                address: req.address,
                api_secret: req.api_secret,
                max_concurrent: req.max_concurrent as i32,
                resources: serde_json::to_value(&req.resources).map_err(|e| Error::Internal(e.into()))?,
                labels: serde_json::to_value(&req.labels).map_err(|e| Error::Internal(e.into()))?,
            })
            .await?;
        tracing::info!(node = %node.name, cluster = %me.cluster, "node registered");
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

    /// Records a heartbeat of the caller's node and repairs what pushes
    /// missed. A node lists every call it has until the gateway has stored
    /// its outcome (a report it cannot deliver is retried, and listed, for as
    /// long as it takes), and a listed call is marked as acknowledged: the
    /// node had it. A dispatch placed on the node that it does not list is
    /// then either requeued (no heartbeat ever listed it, after a grace
    /// period: the node never had it, as a call it had would still be listed)
    /// or failed with `outcome_lost` (a heartbeat listed it, so its code may
    /// have run: it is never run twice). A cancelling one it does not list is
    /// done.
    pub async fn node_heartbeat(&self, caller: &Caller, node_id: Uuid, heartbeat: wire::Heartbeat) -> Result<NodeRow> {
        let me = self.node_key(caller)?;
        let warm = heartbeat.warm_workers.map(|w| w.min(i32::MAX as u32) as i32);
        let HeartbeatView { mut node, active, has_objects } =
            self.db.node_heartbeat_view(node_id, &me).await?.ok_or_else(|| Error::NotFound {
                kind: "node",
                id: format!("{node_id} for this credential (register again with POST /v1/nodes)"),
            })?;
        // Written soon, with other nodes' heartbeats, by one statement.
        self.heartbeats.send((node_id, warm));
        node.last_heartbeat_at = chrono::Utc::now();
        node.warm_workers = warm.or(node.warm_workers);
        let listed: HashSet<Uuid> = heartbeat.running.iter().map(|id| id.0).collect();
        let grace = chrono::Duration::seconds(self.settings.nodes.unacknowledged_requeue_s.into());
        let now = chrono::Utc::now();
        let unacked_listed: Vec<Uuid> = active
            .iter()
            .filter(|r| r.acked_at.is_none() && listed.contains(&r.dispatch_id))
            .map(|r| r.dispatch_id)
            .collect();
        if !unacked_listed.is_empty() {
            self.db.dispatch_ack_listed(node_id, &unacked_listed).await?;
        }
        for row in active {
            if listed.contains(&row.dispatch_id) || now - row.placed_at < grace {
                continue;
            }
            let repaired = if row.cancelling {
                let outcome = Outcome { reason: Some("the node no longer runs it".into()), ..Outcome::default() };
                self.dispatch_apply(Actor::Gateway, row.dispatch_id, Event::CancelConfirmed, outcome).await.map(drop)
            } else if row.acked_at.is_some() {
                let message = format!(
                    "node {} had the call but no longer lists it, and its outcome never reached the gateway; \
                     it is not run again",
                    node.name
                );
                let outcome = Outcome::failed("outcome_lost", &message);
                self.dispatch_apply(Actor::Gateway, row.dispatch_id, Event::Fail, outcome).await.map(drop)
            } else {
                self.dispatch_requeue(
                    row.dispatch_id,
                    row.requeues,
                    "its node never acknowledged it (no heartbeat listed it)",
                )
                .await;
                Ok(())
            };
            if let Err(err) = repaired {
                tracing::warn!(dispatch_id = %row.dispatch_id, error = %err, "heartbeat repair failed");
            }
        }
        // Most nodes hold no objects and list none: nothing to reconcile.
        if has_objects || !heartbeat.instances.is_empty() {
            self.object_heartbeat(node_id, &node.name, &heartbeat.instances).await?;
        }
        // Work queued on this replica for the node's cluster may fit now. Not
        // a placement pass per heartbeat otherwise: with many nodes that
        // would be hundreds of passes a second finding nothing to place.
        if node.running < i64::from(node.max_concurrent) {
            self.slot_freed(&ClusterKey::new(&node.project, &node.cluster));
        }
        Ok(node)
    }

    /// Records the liveness of every node whose link this replica holds, by
    /// one statement: each node was alive when its link last heard from it (a
    /// pong to the replica's ping, or a request). A linked node needs no
    /// heartbeat request to stay `ready`; its heartbeats, less frequent, carry
    /// what it runs for the repair (see `node_heartbeat`).
    pub async fn link_liveness_step(&self) -> Result<serde_json::Value> {
        let (nodes, ages_ms): (Vec<Uuid>, Vec<i64>) = self
            .nodes
            .links
            .silences()
            .into_iter()
            .map(|(node_id, silent_for)| (node_id, silent_for.as_millis() as i64))
            .unzip();
        if !nodes.is_empty() {
            self.db.node_links_alive(&nodes, &ages_ms).await?;
        }
        Ok(serde_json::json!({ "linked_nodes": nodes.len() }))
    }

    /// Checks that `node_id` is the caller's own registered node (before it opens its link).
    pub async fn node_link_check(&self, caller: &Caller, node_id: Uuid) -> Result<()> {
        let binding = caller.node().ok_or(Error::MissingNodeCredential)?;
        match self.node_id_of(caller, binding).await? {
            Some(id) if id == node_id => Ok(()),
            _ => Err(Error::NotFound {
                kind: "node",
                id: format!("{node_id} for this credential (register with POST /v1/nodes first)"),
            }),
        }
    }

    /// Every node of the caller's project (admin).
    pub async fn node_list(&self, caller: &Caller) -> Result<Vec<NodeRow>> {
        self.db.node_list(&caller.project, None).await
    }

    /// Sends a cancel for a `cancelling` dispatch to its node. If the node does
    /// not know the call, the cancel is complete.
    pub async fn cancel_forward(&self, row: &DispatchRow) {
        let Some(node_id) = row.node_id else { return };
        // A node linked to another replica is told through that replica.
        let holder = match self.nodes.links.get(node_id) {
            Some(_) => None,
            None => self.db.node_link_replica(node_id).await.unwrap_or_else(|err| {
                tracing::warn!(%node_id, error = %err, "cannot read which replica holds a node's link");
                None
            }),
        };
        if let Some(holder) = self.holder_elsewhere(node_id, holder) {
            self.publisher.relay(Channel::RelayCancel, holder, row.dispatch_id);
            return;
        }
        self.cancel_send(row, node_id).await
    }

    /// A cancel another replica asked for, of a call on a node whose link this
    /// replica holds: sent if the call is still being cancelled. Never
    /// relayed again; an undelivered one is re-sent by the cancel repair.
    pub async fn relay_cancel(&self, id: Uuid) {
        match self.db.dispatch_get(None, id).await {
            Ok(Some(row)) if row.state == DispatchState::Cancelling => {
                if let Some(node_id) = row.node_id {
                    self.cancel_send(&row, node_id).await
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(dispatch_id = %id, error = %err, "cannot read a relayed cancel's dispatch"),
        }
    }

    /// Sends a cancel to the node (over its link if this replica holds it, else over HTTP).
    async fn cancel_send(&self, row: &DispatchRow, node_id: Uuid) {
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
                let _ = self.dispatch_apply(Actor::Gateway, row.dispatch_id, Event::CancelConfirmed, outcome).await;
            }
            Err(err) => {
                tracing::warn!(dispatch_id = %row.dispatch_id, node = %node.name, error = %err, "cancel not delivered; will retry")
            }
        }
    }

    /// Fails a dispatch whose node is gone.
    pub async fn dispatch_fail_node_lost(&self, row: &DispatchRow, message: &str) {
        let outcome = Outcome::failed("node_lost", message);
        if let Err(err) = self.dispatch_apply(Actor::Gateway, row.dispatch_id, Event::Fail, outcome).await {
            tracing::warn!(dispatch_id = %row.dispatch_id, error = %err, "cannot fail a dispatch of a lost node");
        }
    }
}

fn node_key(caller: &Caller, binding: &NodeBinding) -> NodeKey {
    NodeKey { cluster: ClusterKey::new(&caller.project, &binding.cluster), name: binding.name.clone() }
}
