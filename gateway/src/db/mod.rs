//! The Postgres data store: every SQL statement the gateway runs lives below here.
//!
//! Queries are checked at compile time (`query!`/`query_as!`, with `.sqlx/`
//! committed). Functions return domain rows and `crate::Error`, never HTTP types.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

pub mod bundle;
pub mod cluster;
pub mod dispatch;
pub mod log;
pub mod node;
pub mod token;

pub use bundle::{BundleRow, FunctionRow};
pub use cluster::{ClusterRow, ClusterState, InstanceRow, InstanceState, NewCluster, NewInstance};
pub use dispatch::{DispatchRow, EventRow, ListFilter, NewDispatch, Transition};
pub use log::{LogRow, LogStream};
pub use node::{NewNode, NodeEndpoint, NodeRow, NodeState};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct DataStore {
    pool: PgPool,
}

impl DataStore {
    /// Connects lazily: the first query opens the first connection.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<DataStore, sqlx::Error> {
        let options: PgConnectOptions = settings.url.expose_secret().parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            // A broken connection fails its query, which callers see as
            // `Unavailable`; pinging before every use would add a round trip
            // to every statement.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_s))
            .connect_lazy_with(options.application_name("rh-gateway"));
        Ok(DataStore { pool })
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> DataStore {
        DataStore { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Succeeds if the database answers a trivial query; any failure is `Unavailable`.
    pub async fn ping(&self) -> crate::Result<()> {
        sqlx::query!("select 1 as one").fetch_one(&self.pool).await.map_err(crate::Error::Unavailable)?;
        Ok(())
    }
}
