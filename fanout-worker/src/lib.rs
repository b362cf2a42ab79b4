//! Herald's fan-out role (DESIGN.md flows 1–3): the audience-sizing dispatcher that picks a
//! strategy per campaign, the batcher that pages through an audience by key and cuts
//! 1,000-user batches onto the bus under a rate limiter, the batch workers that turn a batch
//! into notification rows and channel messages, and the broadcast lifecycle.
//!
//! It talks to the world only through the ports of `herald_core::Context`; it owns no HTTP
//! routes (campaign endpoints live in `herald-api`) and no storage code.
//!
//! Filled by issue #3 (Campaigns) and #4 (broadcast lifecycle).
