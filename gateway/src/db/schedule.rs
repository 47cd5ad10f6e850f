//! Schedule rows, and the claim the firer holds while it fires one.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

/// One row of `schedule`.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub schedule_id: Uuid,
    pub project: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub template: Value,
    pub overlap: String,
    pub catchup: String,
    pub max_catchup: i32,
    pub paused: bool,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_fired_for: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A due schedule, locked for this replica until [`ScheduleClaim::advance`]
/// commits (or the claim is dropped, which gives it back unchanged).
pub struct ScheduleClaim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub row: ScheduleRow,
}

impl ScheduleClaim {
    /// Records where the schedule goes next and releases it.
    pub async fn advance(
        mut self,
        next_fire_at: Option<DateTime<Utc>>,
        last_fired_for: Option<DateTime<Utc>>,
    ) -> Result<()> {
        sqlx::query!(
            "update schedule set next_fire_at = $2, last_fired_for = coalesce($3, last_fired_for)
             where schedule_id = $1",
            self.row.schedule_id,
            next_fire_at,
            last_fired_for,
        )
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

impl DataStore {
    /// Inserts a schedule; `None` if the project already has one by that name.
    pub async fn schedule_insert(&self, row: &ScheduleRow) -> Result<Option<ScheduleRow>> {
        Ok(sqlx::query_as!(
            ScheduleRow,
            "insert into schedule (schedule_id, project, name, cron, timezone, template, overlap, catchup,
                                   max_catchup, paused, start_at, end_at, next_fire_at, created_by)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             on conflict (project, name) do nothing
             returning schedule_id, project, name, cron, timezone, template, overlap, catchup, max_catchup,
                       paused, start_at, end_at, next_fire_at, last_fired_for, created_by, created_at, updated_at",
            row.schedule_id,
            row.project,
            row.name,
            row.cron,
            row.timezone,
            row.template,
            row.overlap,
            row.catchup,
            row.max_catchup,
            row.paused,
            row.start_at,
            row.end_at,
            row.next_fire_at,
            row.created_by,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// One schedule of `project`.
    pub async fn schedule_get(&self, project: &str, name: &str) -> Result<Option<ScheduleRow>> {
        Ok(sqlx::query_as!(
            ScheduleRow,
            "select schedule_id, project, name, cron, timezone, template, overlap, catchup, max_catchup,
                    paused, start_at, end_at, next_fire_at, last_fired_for, created_by, created_at, updated_at
             from schedule where project = $1 and name = $2",
            project,
            name,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every schedule of `project`, by name.
    pub async fn schedule_list(&self, project: &str) -> Result<Vec<ScheduleRow>> {
        Ok(sqlx::query_as!(
            ScheduleRow,
            "select schedule_id, project, name, cron, timezone, template, overlap, catchup, max_catchup,
                    paused, start_at, end_at, next_fire_at, last_fired_for, created_by, created_at, updated_at
             from schedule where project = $1 order by name limit 1000",
            project,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces a schedule's settings (by id), keeping what it last fired for.
    pub async fn schedule_update(&self, row: &ScheduleRow) -> Result<Option<ScheduleRow>> {
        Ok(sqlx::query_as!(
            ScheduleRow,
            "update schedule set cron = $2, timezone = $3, template = $4, overlap = $5, catchup = $6,
                    max_catchup = $7, paused = $8, start_at = $9, end_at = $10, next_fire_at = $11,
                    updated_at = now()
             where schedule_id = $1
             returning schedule_id, project, name, cron, timezone, template, overlap, catchup, max_catchup,
                       paused, start_at, end_at, next_fire_at, last_fired_for, created_by, created_at, updated_at",
            row.schedule_id,
            row.cron,
            row.timezone,
            row.template,
            row.overlap,
            row.catchup,
            row.max_catchup,
            row.paused,
            row.start_at,
            row.end_at,
            row.next_fire_at,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Deletes a schedule; false if there was none. Its past dispatches stay.
    pub async fn schedule_delete(&self, project: &str, name: &str) -> Result<bool> {
        let done = sqlx::query!("delete from schedule where project = $1 and name = $2", project, name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The most overdue schedule no other replica is firing, locked, or `None`.
    /// (`except`: schedules this pass already handled.)
    pub async fn schedule_claim_due(&self, now: DateTime<Utc>, except: &[Uuid]) -> Result<Option<ScheduleClaim>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as!(
            ScheduleRow,
            "select schedule_id, project, name, cron, timezone, template, overlap, catchup, max_catchup,
                    paused, start_at, end_at, next_fire_at, last_fired_for, created_by, created_at, updated_at
             from schedule where not paused and next_fire_at <= $1 and schedule_id <> all($2)
             order by next_fire_at limit 1 for update skip locked",
            now,
            except,
        )
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.map(|row| ScheduleClaim { tx, row }))
    }

    /// The earliest instant an unpaused schedule is due.
    pub async fn schedule_next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let next =
            sqlx::query_scalar!("select min(next_fire_at) from schedule where not paused and next_fire_at is not null")
                .fetch_one(self.pool())
                .await?;
        Ok(next)
    }
}
