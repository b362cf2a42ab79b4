//! Herald's push gateway (DESIGN.md flow 6): consumers of the per-channel bus topics, provider
//! clients (FCM, APNs, SMTP, SMS over HTTP, webhooks), per-token result handling, retries with
//! backoff, the dead-letter queue and stale-token cleanup.
//!
//! It consumes the bus and updates devices and delivery counters through the ports of
//! `herald_core::Context`; it decides nothing about audiences or inbox contents.
//!
//! Filled by issue #6 (Push gateway).
