//! The dashboard's rows: one-time login links, browser sessions, and the
//! per-function figures its charts draw.

use chrono::{DateTime, Utc};

use super::DataStore;
use crate::Result;

/// Who a login link or a session acts for: the token it came from.
#[derive(Debug, Clone)]
pub struct Grant {
    pub project: String,
    pub sub: String,
    pub scopes: Vec<String>,
    pub token_jti: String,
    pub token_exp: DateTime<Utc>,
}

/// A browser session, found by its cookie's hash.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub project: String,
    pub sub: String,
    pub scopes: Vec<String>,
    pub token_jti: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// One hour of one function's finished dispatches.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionHour {
    pub hour: DateTime<Utc>,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub timed_out: i64,
    /// Median running time (started → finished) of the calls that ran, in ms.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

impl DataStore {
    /// Stores a login link's hash; it works once, until `expires_at`.
    /// Links that expired a day ago are swept on the way.
    pub async fn ui_link_insert(&self, code_sha256: &[u8], grant: &Grant, expires_at: DateTime<Utc>) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query!("delete from ui_login_link where expires_at < now() - interval '1 day'").execute(&mut *tx).await?;
        sqlx::query!(
            r#"
            insert into ui_login_link (code_sha256, project, sub, scopes, token_jti, token_exp, expires_at)
            values ($1, $2, $3, $4, $5, $6, $7)
            "#,
            code_sha256,
            grant.project,
            grant.sub,
            &grant.scopes,
            grant.token_jti,
            grant.token_exp,
            expires_at,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses up a login link: its grant, if it exists, has not expired and
    /// was never used. Exactly one caller can win this.
    pub async fn ui_link_consume(&self, code_sha256: &[u8]) -> Result<Option<Grant>> {
        let row = sqlx::query!(
            r#"
            update ui_login_link set used_at = now()
            where code_sha256 = $1 and used_at is null and expires_at > now()
            returning project, sub, scopes, token_jti, token_exp
            "#,
            code_sha256
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| Grant {
            project: r.project,
            sub: r.sub,
            scopes: r.scopes,
            token_jti: r.token_jti,
            token_exp: r.token_exp,
        }))
    }

    /// Stores a session's hash. Expired sessions are swept on the way.
    pub async fn ui_session_insert(
        &self,
        session_sha256: &[u8],
        grant: &Grant,
        csrf_token: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query!("delete from ui_session where expires_at < now()").execute(&mut *tx).await?;
        sqlx::query!(
            r#"
            insert into ui_session (session_sha256, project, sub, scopes, token_jti, csrf_token, expires_at)
            values ($1, $2, $3, $4, $5, $6, $7)
            "#,
            session_sha256,
            grant.project,
            grant.sub,
            &grant.scopes,
            grant.token_jti,
            csrf_token,
            expires_at,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session with this cookie hash.
    pub async fn ui_session_get(&self, session_sha256: &[u8]) -> Result<Option<SessionRow>> {
        let row = sqlx::query_as!(
            SessionRow,
            r#"
            select project, sub, scopes, token_jti, csrf_token, expires_at
            from ui_session where session_sha256 = $1 and expires_at > now()
            "#,
            session_sha256
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Ends a session (signing out).
    pub async fn ui_session_delete(&self, session_sha256: &[u8]) -> Result<()> {
        sqlx::query!("delete from ui_session where session_sha256 = $1", session_sha256).execute(self.pool()).await?;
        Ok(())
    }

    /// Outcome counts and running-time percentiles per hour of one
    /// function's dispatches created since `since` (at most `max_rows` of
    /// them, newest first, so a busy function cannot make the page slow).
    pub async fn function_hours(
        &self,
        project: &str,
        function: &str,
        since: DateTime<Utc>,
        max_rows: i64,
    ) -> Result<Vec<FunctionHour>> {
        let rows = sqlx::query_as!(
            FunctionHour,
            r#"
            with recent as (
                select state::text as state, started_at, finished_at
                from dispatch
                where project = $1 and coalesce(function_name, function_ref) = $2 and created_at >= $3
                order by coalesce(function_name, function_ref), dispatch_id desc
                limit $4
            )
            select date_trunc('hour', finished_at) as "hour!",
                   count(*) filter (where state = 'succeeded') as "succeeded!",
                   count(*) filter (where state = 'failed') as "failed!",
                   count(*) filter (where state = 'cancelled') as "cancelled!",
                   count(*) filter (where state = 'timed_out') as "timed_out!",
                   percentile_cont(0.5) within group (order by (extract(epoch from finished_at - started_at) * 1000)::float8)
                       filter (where started_at is not null) as p50_ms,
                   percentile_cont(0.95) within group (order by (extract(epoch from finished_at - started_at) * 1000)::float8)
                       filter (where started_at is not null) as p95_ms
            from recent
            where finished_at is not null
            group by 1
            order by 1
            "#,
            project,
            function,
            since,
            max_rows,
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }
}
