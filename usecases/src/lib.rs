//! Herald's use cases: what a request asks Herald to do, apart from how it arrived (HTTP,
//! CLI, a rule firing). Creating a campaign (validated, sized, strategy chosen, idempotent by
//! construction) and turning an event into a campaign live here, so every caller goes through
//! the same path. The delay publisher, which every role that defers work runs, lives here too.
//!
//! It works only through the ports of `herald_core::Context`: no HTTP types, no storage
//! driver, no role crate. Errors are `herald_core::Error`; the HTTP crates map them.

pub mod analytics;
pub mod campaigns;
pub mod changes;
pub mod delays;
pub mod digests;
pub mod dry_run;
pub mod events;
pub mod explain;
pub mod ops;
pub mod preview;
pub mod retractions;
pub mod revisions;
