//! Use cases: what the API (and the CLI) can ask the gateway to do.
//!
//! Functions here take wire input and a [`Caller`](crate::auth::Caller),
//! enforce project isolation and the state machine, and return domain rows.
//! They know nothing of HTTP.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::compute::Providers;
use crate::config::Settings;
use crate::db::DataStore;
use crate::node_client::NodeClient;
use crate::notify::{Channel, Notifier, Publisher};

pub mod bundle;
pub mod cluster;
pub mod dispatch;
pub mod logs;
pub mod node;
pub mod placement;
pub mod provision;

/// The application: the data store, notification hubs, the node client and settings.
#[derive(Clone)]
pub struct App {
    pub db: DataStore,
    /// Wakes long-polls when a dispatch changes state.
    pub notifier: Notifier,
    /// Wakes log followers when a dispatch gets new output.
    pub log_notifier: Notifier,
    /// Tells the other gateway replicas about changes.
    pub publisher: Publisher,
    pub nodes: NodeClient,
    /// Signals the placement task that there may be work to place.
    pub placement: Arc<Notify>,
    /// Signals the provisioner that a cluster changed.
    pub provisioner: Arc<Notify>,
    /// Signals the orphan sweep.
    pub orphan_sweep: Arc<Notify>,
    /// The configured compute providers.
    pub providers: Providers,
    /// Cancelled when the gateway shuts down, so long-polls return at once.
    pub shutdown: CancellationToken,
    pub settings: Arc<Settings>,
}

impl App {
    /// A dispatch's state changed: wake local waiters now, tell other replicas soon.
    pub fn dispatch_changed(&self, id: uuid::Uuid) {
        self.notifier.notify(id);
        self.publisher.publish(Channel::DispatchState, id);
    }

    /// A dispatch got new output.
    pub fn logs_changed(&self, id: uuid::Uuid) {
        self.log_notifier.notify(id);
        self.publisher.publish(Channel::DispatchLog, id);
    }
}
