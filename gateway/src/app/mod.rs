//! Use cases: what the API (and the CLI) can ask the gateway to do.
//!
//! Functions here take validated-or-raw wire input and a [`Caller`], enforce
//! project isolation and the state machine, and return domain rows. They know
//! nothing of HTTP.

use tokio_util::sync::CancellationToken;

use crate::db::DataStore;
use crate::notify::Notifier;

pub mod dispatch;

/// The application: the data store plus the in-process notification hub.
#[derive(Clone)]
pub struct App {
    pub db: DataStore,
    pub notifier: Notifier,
    /// Cancelled when the gateway shuts down, so long-polls return at once.
    pub shutdown: CancellationToken,
    /// Longest wait a client may ask for, in seconds.
    pub max_wait_s: u32,
}
