//! Call logs: batches shipped by nodes, pages and live streams read by clients.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Written by the gateway or node, e.g. a truncation marker.
    System,
}

/// One chunk of output, in order within its dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// Position within the dispatch's log, from 1; the node assigns it.
    #[schema(minimum = 1)]
    pub seq: i64,
    pub stream: LogStream,
    pub text: String,
    /// When the gateway stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// `POST /v1/dispatches/{id}/logs`: a node ships a batch. Idempotent per `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"entries": [{"seq": 1, "stream": "stdout", "text": "epoch 1: loss 0.31\n"}]}))]
pub struct LogBatch {
    pub entries: Vec<LogEntry>,
}

/// `GET /v1/dispatches/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// Pass as `offset` to read on from here.
    pub next_offset: i64,
    /// True once the dispatch is terminal and every entry has been returned.
    pub complete: bool,
    /// True if the log hit its size limit; a `system` entry marks where.
    pub truncated: bool,
}

/// Query of `GET /v1/dispatches/{id}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Return entries after this `seq` (default 0: from the start).
    pub offset: Option<i64>,
    /// Stream entries live as server-sent events until the dispatch ends.
    pub follow: Option<bool>,
}

/// One server-sent event of `GET /v1/dispatches/{id}/logs?follow=true`, as
/// it travels: `log` events carry a [`LogEntry`] as JSON text in `data` (and
/// its `seq` as `id`); the last event, `end`, carries the terminal
/// [`crate::Dispatch`]; `error` says the stream failed (retry from the last id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogStreamEvent {
    /// `log`, `end` or `error`.
    #[schema(pattern = "^(log|end|error)$")]
    pub event: String,
    /// JSON text: a `LogEntry` for `log`, a `Dispatch` for `end`; plain text for `error`.
    pub data: String,
    /// The entry's `seq`, on `log` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}
