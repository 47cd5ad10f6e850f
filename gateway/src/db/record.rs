//! Run records: written once per dispatch, read back whole.

use serde_json::Value;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

impl DataStore {
    /// Stores a dispatch's run record unless it has one (the first write wins). True if this one was stored.
    pub async fn record_insert(&self, dispatch_id: Uuid, record: &Value) -> Result<bool> {
        let stored = sqlx::query!(
            "insert into dispatch_record (dispatch_id, record) values ($1, $2) on conflict (dispatch_id) do nothing",
            dispatch_id,
            record
        )
        .execute(self.pool())
        .await?;
        Ok(stored.rows_affected() == 1)
    }

    /// A dispatch's run record, if the call has started.
    pub async fn record_get(&self, dispatch_id: Uuid) -> Result<Option<Value>> {
        let record = sqlx::query_scalar!("select record from dispatch_record where dispatch_id = $1", dispatch_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(record)
    }
}
