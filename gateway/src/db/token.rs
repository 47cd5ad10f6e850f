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

impl DataStore {
    /// Sends one `NOTIFY` on `channel` per payload, in one statement.
    pub async fn notify_many(&self, channel: &str, payloads: &[String]) -> Result<()> {
        sqlx::query_scalar!("select notify_many($1, $2)", channel, payloads).fetch_one(self.pool()).await?;
        Ok(())
    }
}
