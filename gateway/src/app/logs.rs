//! Call output: appended by nodes in batches, read by clients in pages or live.

use uuid::Uuid;

use super::dispatch::not_found;
use super::App;
use crate::auth::Caller;
use crate::db::{DispatchRow, LogRow, LogStream};
use crate::{Error, Result};

/// Most entries one read returns.
pub const LOG_PAGE: i64 = 1000;

impl App {
    /// Stores a batch from the caller's node, which must be the node the
    /// dispatch is placed on. Re-sent entries (same `seq`) are ignored. Once
    /// the dispatch's log reaches its size limit, the rest is dropped and a
    /// `system` entry marks the cut.
    pub async fn dispatch_logs_append(&self, caller: &Caller, id: Uuid, batch: wire::LogBatch) -> Result<()> {
        let binding = caller.node().ok_or(Error::MissingNodeCredential)?;
        let entries = entries_checked(batch.entries, "entries.seq")?;
        let node_id = self.node_id_of(caller, binding).await?;
        let row = self.db.dispatch_get(None, id).await?.filter(|row| row.node_id.is_some() && row.node_id == node_id);
        self.logs_store(&row.ok_or_else(|| not_found(id))?, entries).await
    }

    /// [`App::dispatch_logs_append`] for entries already checked, to a dispatch as read.
    pub(crate) async fn logs_store(&self, row: &DispatchRow, batch: Vec<(i64, LogStream, String)>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let id = row.dispatch_id;
        if row.log_truncated {
            return Ok(());
        }
        let limit = self.settings.call_logs.max_bytes_per_dispatch as i64;
        let mut budget = limit - row.log_bytes;
        let mut entries = Vec::with_capacity(batch.len());
        let mut bytes = 0i64;
        let mut truncated = false;
        for (seq, stream, text) in batch {
            let len = text.len() as i64;
            if len <= budget {
                budget -= len;
                bytes += len;
                entries.push((seq, stream, text));
                continue;
            }
            let mut cut = budget.max(0) as usize;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut > 0 {
                bytes += cut as i64;
                entries.push((seq, stream, text[..cut].to_owned()));
            }
            let marker = format!("\n[log truncated: this dispatch's output passed the {limit}-byte limit]\n");
            entries.push((seq + 1, LogStream::System, marker));
            truncated = true;
            break;
        }
        self.db.log_append(id, &entries, bytes, truncated).await?;
        self.logs_changed(id);
        Ok(())
    }

    /// The dispatch (read first) and its entries after `offset`. Nodes ship
    /// all output before the terminal report, so once the dispatch read here
    /// is terminal and fewer than a page of entries follow, the log is complete.
    pub async fn dispatch_logs_read(
        &self,
        caller: &Caller,
        id: Uuid,
        offset: i64,
    ) -> Result<(DispatchRow, Vec<LogRow>, bool)> {
        let row = self.dispatch_get(caller, id).await?;
        self.dispatch_logs_after(row, offset, (offset == 0).then_some(0)).await
    }

    /// [`App::dispatch_logs_read`] for a dispatch row already in hand.
    /// `seen_bytes`, if known, is how much output the reader already has;
    /// when that is all the row says is stored, nothing is read.
    pub async fn dispatch_logs_after(
        &self,
        row: DispatchRow,
        offset: i64,
        seen_bytes: Option<i64>,
    ) -> Result<(DispatchRow, Vec<LogRow>, bool)> {
        if seen_bytes == Some(row.log_bytes) && !row.log_truncated {
            let complete = row.state.is_terminal();
            return Ok((row, Vec::new(), complete));
        }
        let entries = self.db.log_read(row.dispatch_id, offset, LOG_PAGE).await?;
        let complete = row.state.is_terminal() && (entries.len() as i64) < LOG_PAGE;
        Ok((row, entries, complete))
    }
}

/// A node's entries as stored: `seq` numbers start at 1.
pub(crate) fn entries_checked(
    entries: Vec<wire::LogEntry>,
    field: &'static str,
) -> Result<Vec<(i64, LogStream, String)>> {
    entries
        .into_iter()
        .map(|entry| {
            if entry.seq < 1 {
                return Err(Error::invalid(field, "log `seq` numbers start at 1"));
            }
            if entry.seq > i64::MAX / 2 {
                return Err(Error::invalid(field, "log `seq` numbers must stay below 2^62"));
            }
            let stream = match entry.stream {
                wire::LogStream::Stdout => LogStream::Stdout,
                wire::LogStream::Stderr => LogStream::Stderr,
                wire::LogStream::System => LogStream::System,
            };
            Ok((entry.seq, stream, entry.text))
        })
        .collect()
}
