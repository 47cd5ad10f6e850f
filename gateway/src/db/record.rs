//! Run records: written once per dispatch, read back whole.

use serde_json::Value;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

impl DataStore {
    /// Stores run records, each unless its dispatch has one (the first write
    /// wins), in one statement. Returns how many were stored.
    pub async fn records_insert(&self, dispatch_ids: &[Uuid], records: &[Value]) -> Result<usize> {
        let stored = sqlx::query!(
            "insert into dispatch_record (dispatch_id, record)
             select * from unnest($1::uuid[], $2::jsonb[])
             on conflict (dispatch_id) do nothing",
            dispatch_ids,
            records
        )
        .execute(self.pool())
        .await?;
        Ok(stored.rows_affected() as usize)
    }

    /// A dispatch's run record, if the call has started.
    pub async fn record_get(&self, dispatch_id: Uuid) -> Result<Option<Value>> {
        let record = sqlx::query_scalar!("select record from dispatch_record where dispatch_id = $1", dispatch_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(record)
    }
}
