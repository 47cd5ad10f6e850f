//! The gateway's domain error: what went wrong, in terms a caller can act on.
//!
//! Only `api::error` turns it into HTTP. Internal context (database messages,
//! error chains) lives in `#[source]` fields and is logged, never shown.

use crate::dispatch::InvalidTransition;

/// An error from the application or database layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A resource does not exist, or belongs to another project (404).
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },

    /// A request value is invalid (422). `field` names it.
    #[error("{message}")]
    InvalidField { field: String, message: String },

    /// The dispatch's state does not allow the event (409).
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),

    /// An idempotency key was reused with another body (409).
    #[error(
        "idempotency key `{key}` was already used with a different request body; \
         resend the original body or use a new key"
    )]
    IdempotencyConflict { key: String },

    /// The caller expected another generation (409).
    #[error("the dispatch is at generation {actual}, not the expected {expected}; re-read it and retry")]
    StaleGeneration { expected: i64, actual: i64 },

    /// A live cluster already has this name (409).
    #[error("a cluster named `{name}` is already live; delete it first or pick another name")]
    ClusterExists { name: String },

    /// The project already has a schedule by this name (409).
    #[error("a schedule named `{name}` already exists; change it with PATCH, delete it first, or pick another name")]
    ScheduleExists { name: String },

    /// A live instance has this name, with other arguments (409).
    #[error(
        "an instance named `{name}` is already live ({state}) with other arguments; \
         attach with the same ones, delete it first, or pick another name"
    )]
    ObjectExists { name: String, state: &'static str },

    /// The instance cannot take method calls in its state (409).
    #[error("instance `{name}` is {state}{}; delete it and create it again", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    ObjectUnavailable { name: String, state: &'static str, reason: String },

    /// The route takes a node credential and the token is not one (403).
    #[error(
        "this route takes a node credential (a `node` token issued to one node); \
         user and admin tokens carry no node rights"
    )]
    MissingNodeCredential,

    /// A join token is unknown, expired, spent, or its cluster is gone (401).
    #[error(
        "the join token is unknown, expired, already used, or its cluster is no longer live; \
         ask the gateway for a new one"
    )]
    JoinRefused,

    /// An artifact is over a limit (413); the message names the limit.
    #[error("{0}")]
    ArtifactTooLarge(String),

    /// An artifact cannot be kept as sent (409): the path holds other bytes,
    /// or the dispatch no longer runs on the node.
    #[error("{0}")]
    ArtifactConflict(String),

    /// The artifact store failed (503); the source is logged, never shown.
    #[error("the artifact store is unavailable")]
    StoreUnavailable(#[source] anyhow::Error),

    /// The database could not be reached in time (503).
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),

    /// Anything else (500).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// A 422 naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidField { field: field.into(), message: message.into() }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        // 22P05, 22021: text Postgres cannot store (a NUL). Input is checked for
        // NULs before it gets here; this keeps a missed field a clear 422.
        if let sqlx::Error::Database(db) = &err {
            if matches!(db.code().as_deref(), Some("22P05" | "22021")) {
                return Error::invalid("body", "a value contains a NUL character (\\u0000), which cannot be stored");
            }
        }
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => Error::Unavailable(err),
            other => Error::Internal(anyhow::Error::new(other)),
        }
    }
}

/// Shorthand for results in the application and database layers.
pub type Result<T, E = Error> = std::result::Result<T, E>;
