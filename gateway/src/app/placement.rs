//! Placement, node loss and cancel repair: the steps the background tasks run.
//!
//! Each step takes no input, reads what to do from the database, and is safe
//! to run again at any time, on any number of gateway replicas.

use serde_json::json;

use uuid::Uuid;

use super::dispatch::Outcome;
use super::App;
use crate::db::{DispatchRow, NodeEndpoint};
use crate::dispatch::Event;
use crate::node_client::ForwardError;
use crate::notify::Channel;
use crate::Result;

/// Most placements one activation makes before yielding.
const MAX_PLACEMENTS_PER_STEP: usize = 512;
/// Most placements committed together.
const PLACEMENT_BATCH: usize = 64;
/// Forwards that failed to connect in a row before a node is `unreachable`.
const UNREACHABLE_AFTER: i32 = 5;
/// Times a dispatch may go back to the queue before it fails instead, so no
/// loop (a node that keeps refusing, say) can grow its event log without bound.
pub const MAX_REQUEUES: i32 = 5;

impl App {
    /// Places queued dispatches on ready nodes with free slots and forwards
    /// each to its node. Forwarding runs in its own task, so one slow node
    /// does not hold up the rest.
    pub async fn placement_step(&self) -> Result<serde_json::Value> {
        let mut placed = 0;
        let watched: Vec<crate::db::ClusterKey> =
            self.queued_clusters.lock().expect("queued clusters lock poisoned").iter().cloned().collect();
        if !watched.is_empty() {
            // Stop watching queues that have emptied.
            let still = self.db.dispatch_clusters_with_queued(&watched).await?;
            self.queued_clusters
                .lock()
                .expect("queued clusters lock poisoned")
                .retain(|c| !watched.contains(c) || still.contains(c));
        }
        let placeable = self.db.dispatch_placeable_clusters().await?;
        // Each has work queued: watch it, so a slot freeing there wakes
        // placement. Without this a backlog this replica did not queue
        // (another replica's, or one from before a restart) was placed only
        // by the periodic pass, at most one activation's worth a second.
        self.queued_clusters.lock().expect("queued clusters lock poisoned").extend(placeable.iter().cloned());
        for cluster in placeable {
            while placed < MAX_PLACEMENTS_PER_STEP {
                let batch = self.db.dispatch_place_batch(&cluster, PLACEMENT_BATCH).await?;
                if batch.is_empty() {
                    break;
                }
                placed += batch.len();
                for (row, node) in batch {
                    self.dispatch_placed(row, node);
                }
            }
        }
        for object_id in self.db.dispatch_placeable_objects().await? {
            if placed >= MAX_PLACEMENTS_PER_STEP {
                break;
            }
            let batch = self.db.dispatch_place_object_batch(object_id, PLACEMENT_BATCH).await?;
            placed += batch.len();
            for (row, node) in batch {
                self.dispatch_placed(row, node);
            }
        }
        if placed >= MAX_PLACEMENTS_PER_STEP {
            // Yielded with work perhaps left: run again at once, not at the next tick.
            self.placement.notify_one();
        }
        Ok(json!({ "placed": placed }))
    }

    /// Keeps the slot tables small (see [`crate::db::DataStore::slot_vacuum`]).
    pub async fn slot_vacuum_step(&self) -> Result<serde_json::Value> {
        self.db.slot_vacuum().await?;
        Ok(json!({ "vacuumed": ["node_slot", "object_slot"] }))
    }

    /// A queued dispatch was just placed: wake its waiters and send it to its node.
    pub(crate) fn dispatch_placed(&self, row: DispatchRow, node: NodeEndpoint) {
        self.dispatch_changed(&row);
        self.dispatch_forward(row, node);
    }

    /// Sends a placed dispatch to its node: over the node's link if this
    /// replica holds it, through the replica that does if another does, else
    /// over HTTP. Forwarding runs in its own task, so one slow node holds up
    /// nothing else.
    pub(crate) fn dispatch_forward(&self, row: DispatchRow, node: NodeEndpoint) {
        let app = self.clone();
        match app.holder_elsewhere(node.node_id, node.link_replica) {
            // That replica reads the call and sends it (`relay_call`), and
            // deals with the node's answer as `forward` does here.
            Some(holder) => app.publisher.relay(Channel::RelayCall, holder, row.dispatch_id),
            None => {
                tokio::spawn(async move { app.forward(row, node).await });
            }
        }
    }

    /// The replica to send a node's call or cancel through: `holder` (the
    /// one that said it holds the node's link, `node.link_replica`, a routing
    /// hint), unless that is this replica or this replica holds the link.
    pub(crate) fn holder_elsewhere(&self, node_id: Uuid, holder: Option<Uuid>) -> Option<Uuid> {
        if self.nodes.links.get(node_id).is_some() {
            return None;
        }
        holder.filter(|h| *h != self.publisher.replica())
    }

    /// A call another replica placed on a node whose link this replica
    /// holds: sent to the node if it is still placed there and has not
    /// ended. Never relayed again: without the link (it closed meanwhile) it
    /// goes over HTTP.
    pub async fn relay_call(&self, id: Uuid) {
        match self.db.dispatch_placed_with_node(id).await {
            Ok(Some((row, Some(node)))) => self.forward(row, node).await,
            Ok(_) => {}
            // Its node never lists it, so the heartbeat repair requeues it.
            Err(err) => tracing::warn!(dispatch_id = %id, error = %err, "cannot read a relayed call"),
        }
    }

    async fn forward(&self, row: DispatchRow, node: NodeEndpoint) {
        let id = row.dispatch_id;
        let call = wire::StartCall {
            dispatch_id: wire::DispatchId(row.dispatch_id),
            function: row.function_ref.clone(),
            args: serde_json::from_value(row.args.clone()).unwrap_or_default(),
            kwargs: serde_json::from_value(row.kwargs.clone()).unwrap_or_default(),
            bundle: row.bundle.clone(),
            requirements: serde_json::from_value(row.requirements.clone()).unwrap_or_default(),
            timeout_s: row.timeout_s.map(|t| t as u32),
            instance: row.object_id.map(|id| wire::InstanceCall { instance_id: id, method: row.method.clone() }),
        };
        match self.nodes.start(&node, &call).await {
            // Nothing is written for a call its node accepted: the node lists
            // it in every heartbeat until its outcome is stored, and the
            // first heartbeat that does marks it as the node's (see
            // `node_heartbeat`). A call that ends before that needs no mark.
            Ok(()) if node.failing => {
                if let Err(err) = self.db.node_reached(node.node_id).await {
                    tracing::warn!(node = %node.name, error = %err, "cannot clear a node's failed forwards");
                }
            }
            Ok(()) => {}
            Err(ForwardError::Refused { message, unreachable }) => {
                tracing::warn!(dispatch_id = %id, node = %node.name, %message, "node refused a call; requeueing");
                if unreachable {
                    if let Err(err) = self.db.node_forward_failed(node.node_id, UNREACHABLE_AFTER).await {
                        tracing::warn!(node = %node.name, error = %err, "cannot record a failed forward");
                    }
                }
                self.dispatch_requeue(
                    row.dispatch_id,
                    row.requeues,
                    &format!("node {} refused it: {message}", node.name),
                )
                .await;
            }
            // The node's heartbeat tells whether it got the call; see `node_heartbeat`.
            Err(err @ ForwardError::Unknown(_)) => {
                tracing::warn!(dispatch_id = %row.dispatch_id, node = %node.name, error = %err, "forward outcome unknown")
            }
        }
    }

    /// Sends a placed dispatch that never started back to the queue, or fails
    /// it with `placement_failed` once it has been requeued too often.
    pub(crate) async fn dispatch_requeue(&self, id: uuid::Uuid, requeues: i32, reason: &str) {
        let (event, outcome) = if requeues + 1 >= MAX_REQUEUES {
            let message = format!("placed {MAX_REQUEUES} times without starting; last: {reason}");
            (Event::Fail, Outcome::failed("placement_failed", &message))
        } else {
            (Event::Requeue, Outcome { reason: Some(reason.to_owned()), ..Outcome::default() })
        };
        if let Err(err) = self.dispatch_apply(crate::app::dispatch::Actor::Gateway, id, event, outcome).await {
            tracing::warn!(dispatch_id = %id, error = %err, "requeue failed");
        }
    }

    /// Declares silent nodes lost and fails whatever ran on them with `node_lost`.
    pub async fn node_reaper_step(&self) -> Result<serde_json::Value> {
        let newly_lost = self.db.node_mark_lost(self.settings.nodes.lost_after_s.into()).await?;
        let mut failed = 0;
        for node_id in self.db.node_lost_with_work().await? {
            for row in self.db.dispatch_active_on_node(node_id).await? {
                let message =
                    format!("node {node_id} stopped heartbeating for more than {}s", self.settings.nodes.lost_after_s);
                self.dispatch_fail_node_lost(&row, &message).await;
                failed += 1;
            }
        }
        Ok(json!({ "nodes_lost": newly_lost.len(), "dispatches_failed": failed }))
    }

    /// Re-sends cancels that nodes have not confirmed yet.
    pub async fn cancel_repair_step(&self) -> Result<serde_json::Value> {
        let stale = self.db.dispatch_cancelling_stale(2.0).await?;
        for row in &stale {
            self.cancel_forward(row).await;
        }
        Ok(json!({ "resent": stale.len() }))
    }
}
