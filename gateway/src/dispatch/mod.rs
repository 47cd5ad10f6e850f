//! The dispatch lifecycle, kept free of I/O so every rule can be unit-tested.

pub mod state;

pub use state::{DispatchState, Event, InvalidTransition, Next};
