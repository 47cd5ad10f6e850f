//! Call logs, bounded per dispatch.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::DataStore;
use crate::Result;

/// Which stream a log entry came from, as stored in the `log_stream` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "log_stream", rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    System,
}

impl LogStream {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
        }
    }
}

/// One row of `dispatch_log`.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub seq: i64,
    pub stream: LogStream,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

impl DataStore {
    /// Appends entries (duplicates by `seq` are ignored, so a re-sent batch is
    /// harmless) and adds `bytes` to the dispatch's log size, marking it
    /// truncated if `truncated`. One transaction.
    pub async fn log_append(
        &self,
        dispatch_id: Uuid,
        entries: &[(i64, LogStream, String)],
        bytes: i64,
        truncated: bool,
    ) -> Result<()> {
        let seqs: Vec<i64> = entries.iter().map(|e| e.0).collect();
        let streams: Vec<String> = entries.iter().map(|e| e.1.as_str().to_owned()).collect();
        let texts: Vec<String> = entries.iter().map(|e| e.2.clone()).collect();
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query!(
            r#"
            insert into dispatch_log (dispatch_id, seq, stream, text)
            select $1, seq, stream::log_stream, text
            from unnest($2::bigint[], $3::text[], $4::text[]) as batch (seq, stream, text)
            on conflict (dispatch_id, seq) do nothing
            "#,
            dispatch_id,
            &seqs,
            &streams,
            &texts
        )
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() > 0 {
            sqlx::query!(
                "update dispatch set log_bytes = log_bytes + $2, log_truncated = log_truncated or $3 where dispatch_id = $1",
                dispatch_id,
                bytes,
                truncated
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Entries after `offset`, oldest first.
    pub async fn log_read(&self, dispatch_id: Uuid, offset: i64, limit: i64) -> Result<Vec<LogRow>> {
        let mut hot = self.hot.acquire().await?;
        let rows = sqlx::query_as!(
            LogRow,
            r#"
            select seq, stream as "stream: LogStream", text, created_at
            from dispatch_log
            where dispatch_id = $1 and seq > $2
            order by seq
            limit $3
            "#,
            dispatch_id,
            offset,
            limit
        )
        .fetch_all(hot.conn())
        .await;
        Ok(hot.finished(rows)?)
    }
}
