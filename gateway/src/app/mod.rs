//! Use cases: what the API (and the CLI) can ask the gateway to do.
//!
//! Functions here take wire input and a [`Caller`](crate::auth::Caller),
//! enforce project isolation and the state machine, and return domain rows.
//! They know nothing of HTTP.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::compute::Providers;
use crate::config::Settings;
use crate::db::{ClusterKey, DataStore, DispatchRow};
use crate::node_client::NodeClient;
use crate::notify::{Channel, Notifier, Publisher};

pub mod artifact;
pub mod bundle;
pub mod cluster;
pub mod dispatch;
pub mod group;
pub mod logs;
pub mod node;
pub mod object;
pub mod placement;
pub mod provision;
pub mod record;
pub mod schedule;
pub mod ui;

/// The application: the data store, notification hubs, the node client and settings.
#[derive(Clone)]
pub struct App {
    pub db: DataStore,
    /// Wakes long-polls when a dispatch changes state, handing them the row.
    pub notifier: Notifier<Arc<DispatchRow>>,
    /// Wakes log followers when a dispatch gets new output.
    pub log_notifier: Notifier,
    /// Tells the other gateway replicas about changes.
    pub publisher: Publisher,
    pub nodes: NodeClient,
    /// Creates waiting to be written, alone or grouped (see [`group`]).
    pub creates: group::Groups<group::Creates>,
    /// State changes waiting to be written, alone or grouped.
    pub transitions: group::Groups<group::Transitions>,
    /// Heartbeats' times, written in groups in the background.
    pub heartbeats: group::Trailing<(uuid::Uuid, Option<i32>)>,
    /// Signals the placement task that there may be work to place.
    pub placement: Arc<Notify>,
    /// Clusters this replica has seen work queue up on, until placement
    /// finds their queue empty: a slot freeing elsewhere needs no placement
    /// pass (the periodic pass covers other replicas' queues).
    pub queued_clusters: Arc<Mutex<HashSet<ClusterKey>>>,
    /// Creates of one cache key take turns (see `dispatch_insert_cached`).
    pub cache_locks: KeyedLocks,
    /// Signals the provisioner that a cluster changed.
    pub provisioner: Arc<Notify>,
    /// Signals the orphan sweep.
    pub orphan_sweep: Arc<Notify>,
    /// Signals the schedule firer (a schedule was created or changed).
    pub scheduler: Arc<Notify>,
    /// The configured compute providers.
    pub providers: Providers,
    /// Where the files calls keep are stored.
    pub artifacts: crate::artifact_store::ArtifactStore,
    /// (project, sha) pairs known to be held (see [`App::bundle_held`]).
    pub bundles_seen: Arc<Mutex<HashSet<(String, String)>>>,
    /// Node ids by identity, once looked up (ids never change; see [`App::node_id_of`]).
    pub node_ids: Arc<Mutex<std::collections::HashMap<crate::db::NodeKey, uuid::Uuid>>>,
    /// Cancelled when the gateway shuts down, so long-polls return at once.
    pub shutdown: CancellationToken,
    pub settings: Arc<Settings>,
}

impl App {
    /// A dispatch's state changed to `row`: wake local waiters now (with the
    /// row, so they need not read it), tell other replicas soon.
    pub fn dispatch_changed(&self, row: &DispatchRow) {
        self.notifier.notify_with(row.dispatch_id, || Some(Arc::new(row.clone())));
        self.publisher.publish(Channel::DispatchState, row.dispatch_id);
    }

    /// Work is waiting in `cluster`'s queue: wake the placement task, and
    /// keep waking it as slots free until that queue is empty.
    pub fn placement_wanted(&self, cluster: ClusterKey) {
        let mut queued = self.queued_clusters.lock().expect("queued clusters lock poisoned");
        if !queued.contains(&cluster) {
            queued.insert(cluster);
        }
        drop(queued);
        self.placement.notify_one();
    }

    /// A slot of `cluster` freed up: wake the placement task if work waits there.
    pub fn slot_freed(&self, cluster: &ClusterKey) {
        if self.queued_clusters.lock().expect("queued clusters lock poisoned").contains(cluster) {
            self.placement.notify_one();
        }
    }

    /// A dispatch got new output.
    pub fn logs_changed(&self, id: uuid::Uuid) {
        self.log_notifier.notify(id, None);
        self.publisher.publish(Channel::DispatchLog, id);
    }
}

/// One async lock per key, made on first use and dropped when unused.
#[derive(Clone, Default)]
pub struct KeyedLocks(Arc<Mutex<std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>>);

impl KeyedLocks {
    /// The lock of `key`, shared with everyone holding it now.
    pub fn entry(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().expect("keyed locks poisoned");
        if let Some(lock) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 {
            locks.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
    }
}
