//! The node daemon: registers with a gateway, accepts calls signed by it, runs
//! each in a warm worker process hosting an embedded CPython, ships the call's
//! output while it runs, and reports the outcome until the gateway has it.

pub mod api;
pub mod bundles;
pub mod calls;
pub mod cgroup;
pub mod cli;
pub mod envs;
pub mod gateway;
pub mod link;
pub mod outputs;
pub mod protocol;
pub mod python;
pub mod sandbox;
pub mod worker;
