//! The Postgres data store: every SQL statement the gateway runs lives below here.
//!
//! Queries are checked at compile time (`query!`/`query_as!`, with `.sqlx/`
//! committed). Functions return domain rows and `crate::Error`, never HTTP types.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

pub mod artifact;
pub mod bundle;
pub mod cluster;
pub mod dispatch;
pub mod hot;
pub mod log;
pub mod node;
pub mod object;
pub mod record;
pub mod schedule;
pub mod token;
pub mod ui;

pub use artifact::{ArtifactInsert, ArtifactRow};
pub use bundle::{BundleRow, FunctionRow};
pub use cluster::{ClusterKey, ClusterRow, ClusterState, InstanceRow, InstanceState, NewCluster, NewInstance};
pub use dispatch::{DispatchRow, EventRow, ListFilter, NewDispatch, OnNodeRow, Transition};
pub use log::{LogRow, LogStream};
pub use node::{ActiveOnNode, HeartbeatView, NewNode, NodeEndpoint, NodeKey, NodeRow, NodeState};
pub use object::{NewObject, ObjectEventRow, ObjectRow, ObjectState};

/// Exclusive right to one background step among all replicas, while held.
pub struct Lease {
    _tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct DataStore {
    pool: PgPool,
    /// For the statements every dispatch runs; see [`hot`].
    hot: hot::HotConnections,
}

impl DataStore {
    /// Connects lazily: the first query opens the first connection.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<DataStore, sqlx::Error> {
        let options: PgConnectOptions = settings.url.expose_secret().parse()?;
        // No JIT: every statement here is short, and compiling one costs more
        // than running it. Postgres JIT-compiles any plan whose estimate
        // passes `jit_above_cost`, and the placing statement's passed it once
        // its queue grew (its limit comes from a subquery, so the planner
        // guesses 10 % of the queue): 60-90 ms of compiling per 64
        // placements, a third of the rate with 100,000 queued on one node.
        let options = options.application_name("rh-gateway").options([("jit", "off")]);
        // Half the connections serve the hot path, half everything else.
        let hot_max = (settings.max_connections / 2).max(1);
        let timeout = Duration::from_secs(settings.acquire_timeout_s);
        let hot = hot::HotConnections::new(hot::options(options.clone()), hot_max as usize, timeout);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.saturating_sub(hot_max).max(1))
            // A broken connection fails its query, which callers see as
            // `Unavailable`; pinging before every use would add a round trip
            // to every statement.
            .test_before_acquire(false)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Ok(DataStore { pool, hot })
    }

    /// Wraps an existing pool (tests); the hot path gets as many connections again.
    pub fn from_pool(pool: PgPool) -> DataStore {
        let options = (*pool.connect_options()).clone();
        let max = pool.options().get_max_connections() as usize;
        let hot = hot::HotConnections::new(hot::options(options), max, pool.options().get_acquire_timeout());
        DataStore { pool, hot }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Takes the lease `name` if no one holds it: a transaction-scoped advisory
    /// lock, so it is released when the [`Lease`] is dropped, and by Postgres
    /// if this replica dies. `None` if another replica holds it now.
    pub async fn lease(&self, name: &str) -> crate::Result<Option<Lease>> {
        let mut tx = self.pool.begin().await?;
        let got = sqlx::query_scalar!(r#"select pg_try_advisory_xact_lock(hashtextextended($1, 0)) as "got!""#, name)
            .fetch_one(&mut *tx)
            .await?;
        Ok(got.then_some(Lease { _tx: tx }))
    }

    /// Succeeds if the database answers a trivial query; any failure is `Unavailable`.
    pub async fn ping(&self) -> crate::Result<()> {
        sqlx::query!("select 1 as one").fetch_one(&self.pool).await.map_err(crate::Error::Unavailable)?;
        Ok(())
    }
}
