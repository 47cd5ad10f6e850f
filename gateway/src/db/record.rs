//! Run records: written once per dispatch, read back whole.

use serde_json::Value;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

impl DataStore {
    /// Stores run records, each unless its dispatch has one (the first write
    /// wins), and the environments they name unless stored already, in one
    /// statement. Returns how many records were stored.
    pub async fn records_insert(
        &self,
        dispatch_ids: &[Uuid],
        records: &[Value],
        record_environments: &[String],
        digests: &[String],
        infos: &[Value],
    ) -> Result<usize> {
        // The records' foreign keys are checked at the statement's end, when
        // the environments inserted before them are visible.
        let stored = sqlx::query_scalar!(
            r#"
            with environments as (
                insert into run_environment (digest, info)
                select * from unnest($4::text[], $5::jsonb[])
                on conflict (digest) do nothing
            ),
            records as (
                insert into dispatch_record (dispatch_id, record, environment)
                select * from unnest($1::uuid[], $2::jsonb[], $3::text[])
                on conflict (dispatch_id) do nothing
                returning 1
            )
            select count(*) as "stored!" from records
            "#,
            dispatch_ids,
            records,
            record_environments,
            digests,
            infos
        )
        .fetch_one(self.pool())
        .await?;
        Ok(stored as usize)
    }

    /// A dispatch's run record, if the call has started, with the
    /// environment it names (none for a record holding its own).
    pub async fn record_get(&self, dispatch_id: Uuid) -> Result<Option<(Value, Option<Value>)>> {
        let record = sqlx::query!(
            r#"
            select r.record, e.info as "info?"
            from dispatch_record r left join run_environment e on e.digest = r.environment
            where r.dispatch_id = $1
            "#,
            dispatch_id
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(record.map(|r| (r.record, r.info)))
    }
}
