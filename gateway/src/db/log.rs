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

/// One row of `dispatch_log`, with its text as the node sent it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub seq: i64,
    pub stream: LogStream,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// Postgres `text` cannot hold a NUL. Text that has one is stored escaped
/// (a backslash doubled, NUL as backslash-zero) and flagged, so what a call printed comes back
/// byte for byte. Returns each entry's stored text and flag.
pub(crate) fn stored_texts(entries: &[(i64, LogStream, String)]) -> (Vec<String>, Vec<bool>) {
    entries
        .iter()
        .map(|(_, _, text)| {
            if text.contains('\0') {
                (text.replace('\\', "\\\\").replace('\0', "\\0"), true)
            } else {
                (text.clone(), false)
            }
        })
        .unzip()
}

/// The inverse of [`stored_texts`] for one entry.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
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
        let (texts, escaped) = stored_texts(entries);
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query!(
            r#"
            insert into dispatch_log (dispatch_id, seq, stream, text, escaped)
            select $1, seq, stream::log_stream, text, escaped
            from unnest($2::bigint[], $3::text[], $4::text[], $5::bool[]) as batch (seq, stream, text, escaped)
            on conflict (dispatch_id, seq) do nothing
            "#,
            dispatch_id,
            &seqs,
            &streams,
            &texts,
            &escaped
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
        let rows = sqlx::query!(
            r#"
            select seq, stream as "stream: LogStream", text, created_at, escaped
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
        Ok(hot
            .finished(rows)?
            .into_iter()
            .map(|r| LogRow {
                seq: r.seq,
                stream: r.stream,
                text: if r.escaped { unescape(&r.text) } else { r.text },
                created_at: r.created_at,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_a_nul_round_trips_through_its_stored_form() {
        for text in ["plain", "a\0b", "back\\slash\0\\0 and \\\\", "\0", "\\"] {
            let (stored, escaped) = stored_texts(&[(1, LogStream::Stdout, text.to_owned())]);
            assert!(!stored[0].contains('\0'), "{text:?}");
            let back = if escaped[0] { unescape(&stored[0]) } else { stored[0].clone() };
            assert_eq!(back, text);
        }
    }
}
