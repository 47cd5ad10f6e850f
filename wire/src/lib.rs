//! Request and response types shared by the gateway, the node daemon and the SDK.
//!
//! Both sides of every HTTP boundary compile against these structs, so a client
//! and the server cannot drift apart. They carry `serde` and `utoipa` derives and
//! nothing else: no database or HTTP framework types live here.

pub mod artifact;
pub mod bundle;
pub mod cluster;
pub mod dispatch;
pub mod entry;
pub mod error;
pub mod instance;
pub mod log;
pub mod node;
pub mod record;
pub mod schedule;
pub mod ui;

pub use artifact::*;
pub use bundle::*;
pub use cluster::*;
pub use dispatch::*;
pub use entry::*;
pub use error::ErrorBody;
pub use instance::*;
pub use log::*;
pub use node::*;
pub use record::*;
pub use schedule::*;
pub use ui::*;
