//! Herald's core: the domain types, configuration, the backend traits (ports), the audience
//! filter DSL, the clock and the error type.
//!
//! This crate owns the vocabulary every role speaks, and the one runner of background loops
//! ([`worker`]). It must not touch the network or a database: adapters live in
//! `herald-storage`, HTTP in `herald-http` and the role crates, use cases in
//! `herald-usecases`. Apart from the worker runner's tasks, everything here is pure and can be
//! unit-tested without I/O.

pub mod analytics;
pub mod clock;
pub mod config;
pub mod consume;
pub mod context;
pub mod delivery;
pub mod error;
pub mod filter;
pub mod ids;
pub mod metrics_catalog;
pub mod model;
pub mod ports;
pub mod strategy;
pub mod template;
pub mod token;
pub mod topics;
pub mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{Context, Ports};
pub use error::{Error, ErrorKind, Result};
