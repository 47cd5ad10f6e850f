//! The Runhouse Gateway client: one typed method per gateway endpoint, over
//! the same `wire` types the server uses, so client and server cannot drift.
//! Retries, idempotency keys, long-polling and log following live here once;
//! the `rh` CLI and the Python binding build on this crate.

pub mod cli;
pub mod client;
pub mod package;
pub mod reproduce;

pub use client::{Client, Error, Followed, RetryPolicy};
