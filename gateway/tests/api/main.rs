//! API tests: the real gateway on a free port, each test with its own database
//! in a real PostgreSQL server started from the machine's binaries.

mod auth;
mod bodies;
mod cli;
mod dispatches;
mod health;
mod helpers;
mod logs;
mod nodes;
mod openapi;
mod records;
mod schedules;
mod security;
mod transitions;
mod wait;
