//! Connections for the statements every dispatch runs (create, placement,
//! state change, read), kept apart from sqlx's pool.
//!
//! sqlx's pool pings each connection as it comes back (one more round trip
//! to Postgres per statement, and its wake-ups, on a machine where those are
//! what a dispatch costs). Here a connection goes back to the idle list as it
//! is, unless the statement using it did not finish: an I/O error, or a
//! caller that stopped waiting mid-statement, leaves the connection in an
//! unknown state, so it is closed instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `options` for hot connections. Their statements find rows by key or claim
/// a slot, so one generic plan suits every parameter. Without this setting
/// Postgres plans each of a statement's first five executions on every
/// connection anew, and goes on planning whenever the generic plan's
/// estimate looks costlier, and the create's and the report's statements
/// are large. (With the setting database-wide, one run on this machine put
/// a create over REST at 1.9 ms p50 instead of 2.6 ms.)
///
/// The generic plan is made once, at a connection's first execution, from
/// the statistics of that moment, and kept until the next `ANALYZE`. On a
/// table that was small then (a new database, or before autovacuum's first
/// pass) a sequential scan looks cheaper than the primary key, and stays
/// cached as the table grows: the report's statement scanned all 12,342
/// rows of `dispatch` (5,172 buffers, 6.8 ms) to change one, for the first
/// seconds of every benchmark run. These statements are only ever right
/// by index, so sequential scans are off on these connections (Postgres
/// still scans a table that has no usable index).
pub fn options(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")])
}

/// A bounded set of connections, opened on demand.
#[derive(Clone)]
pub struct HotConnections {
    idle: Arc<Mutex<Vec<PgConnection>>>,
    permits: Arc<Semaphore>,
    options: Arc<PgConnectOptions>,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for HotConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotConnections").field("available", &self.permits.available_permits()).finish()
    }
}

impl HotConnections {
    /// At most `max` connections made with `options`; waiting longer than
    /// `acquire_timeout` for one is `PoolTimedOut`.
    pub fn new(options: PgConnectOptions, max: usize, acquire_timeout: Duration) -> HotConnections {
        HotConnections {
            idle: Arc::default(),
            permits: Arc::new(Semaphore::new(max.max(1))),
            options: Arc::new(options),
            acquire_timeout,
        }
    }

    /// A connection for one statement. Call [`Hot::finished`] after it
    /// completes; a `Hot` dropped without that closes its connection.
    pub async fn acquire(&self) -> Result<Hot, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().expect("hot connections lock poisoned").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => PgConnection::connect_with(&self.options).await?,
        };
        Ok(Hot { conn: Some(conn), finished: false, idle: self.idle.clone(), _permit: permit })
    }
}

/// One borrowed connection.
pub struct Hot {
    conn: Option<PgConnection>,
    finished: bool,
    idle: Arc<Mutex<Vec<PgConnection>>>,
    _permit: OwnedSemaphorePermit,
}

impl Hot {
    /// The connection, for a statement.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a Hot holds its connection until dropped")
    }

    /// Marks the statement done, so the connection is reused; passes `result` through.
    /// A statement that failed on the wire (not with a database error) closes it.
    pub fn finished<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.finished = !matches!(
            result,
            Err(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed)
        );
        result
    }
}

impl Drop for Hot {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.finished {
                self.idle.lock().expect("hot connections lock poisoned").push(conn);
            }
            // Otherwise dropping closes the socket; Postgres ends the session.
        }
    }
}
