//! The token revocation list.

use std::collections::HashSet;

use super::DataStore;
use crate::Result;

impl DataStore {
    /// Revokes `jti`. Revoking twice is harmless. A trigger announces it on `token_revoked`.
    pub async fn token_revoke(&self, jti: &str, reason: Option<&str>) -> Result<()> {
        sqlx::query!(
            "insert into revoked_token (jti, reason) values ($1, $2) on conflict (jti) do nothing",
            jti,
            reason
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every revoked token id.
    pub async fn token_revoked_all(&self) -> Result<HashSet<String>> {
        let rows = sqlx::query_scalar!("select jti from revoked_token").fetch_all(self.pool()).await?;
        Ok(rows.into_iter().collect())
    }
}

/// The `application_name` prefix of each replica's listening session.
const LISTENER_NAME: &str = "rh-gateway-listener";

impl DataStore {
    /// Names the notification listener's session after its replica, so
    /// replicas can count each other.
    pub async fn listener_name(
        &self,
        listener: &mut sqlx::postgres::PgListener,
        replica: uuid::Uuid,
    ) -> Result<(), sqlx::Error> {
        let name = format!("{LISTENER_NAME} {replica}");
        sqlx::query_scalar!("select set_config('application_name', $1, false)", name).fetch_one(listener).await?;
        Ok(())
    }

    /// How many other gateway replicas listen for notifications on this database.
    pub async fn listener_peers(&self, replica: uuid::Uuid) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar!(
            r#"
            select count(*) as "peers!" from pg_stat_activity
            where datname = current_database()
              and starts_with(application_name, $1 || ' ') and application_name <> $1 || ' ' || $2
            "#,
            LISTENER_NAME,
            replica.to_string()
        )
        .fetch_one(self.pool())
        .await
    }

    /// Announces this replica to the others on `channel`.
    pub async fn listener_hello(&self, channel: &str, replica: uuid::Uuid) -> Result<(), sqlx::Error> {
        sqlx::query!("select pg_notify($1, $2)", channel, replica.to_string()).execute(self.pool()).await?;
        Ok(())
    }

    /// Sends one `NOTIFY` on `channel` per payload, in one statement.
    pub async fn notify_many(&self, channel: &str, payloads: &[String]) -> Result<()> {
        sqlx::query_scalar!("select notify_many($1, $2)", channel, payloads).fetch_one(self.pool()).await?;
        Ok(())
    }
}
