//! Runhouse Gateway: records every dispatch of a Python function in Postgres
//! and serves the REST API orchestrators and people use to run and watch them.

pub mod api;
pub mod app;
pub mod artifact_store;
pub mod auth;
pub mod background;
pub mod cli;
pub mod compute;
pub mod config;
pub mod db;
pub mod dev;
pub mod dispatch;
pub mod embedded_pg;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod node_client;
pub mod node_link;
pub mod notify;
pub mod schedule;
pub mod startup;
pub mod telemetry;
pub mod ui;

pub use error::{Error, Result};
