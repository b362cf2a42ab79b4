//! Herald's push gateway (DESIGN.md flow 6): consumers of the per-channel bus topics, provider
//! clients (FCM, APNs, SMTP, SMS over HTTP, webhooks), per-token result handling, retries with
//! backoff, the dead-letter queue and stale-token cleanup.
//!
//! Layout: [`consumer`] reads channel messages and acts on outcomes, [`lanes`] groups and paces
//! sends per provider, [`providers`] speak the provider APIs behind [`provider::Provider`],
//! [`results`] adds delivery reports to campaign counters, [`cleanup`] removes stale tokens.
//!
//! It consumes the bus and updates devices, dead letters and delivery counters through the
//! ports of `herald_core::Context`; it decides nothing about audiences or inbox contents, and
//! owns no HTTP routes (the dead-letter and webhook endpoints live in `herald-api`).

pub mod backoff;
pub mod cleanup;
pub mod consumer;
#[cfg(feature = "fakes")]
pub mod fakes;
pub mod lanes;
pub mod provider;
pub mod providers;
pub mod results;

pub use consumer::{Gateway, Providers};

use herald_core::{topics, Context, Result};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the push gateway until `shutdown`, with the providers the configuration sets up.
/// Fails at once when a configured provider cannot be set up (unreadable key file, ...).
pub async fn run(ctx: Context, shutdown: CancellationToken) -> Result<()> {
    let providers = Providers::from_config(&ctx.config.push)?;
    run_with(ctx, providers, shutdown).await;
    Ok(())
}

/// Runs the gateway with the given providers (tests hand in clients of fake servers).
pub async fn run_with(ctx: Context, providers: Providers, shutdown: CancellationToken) {
    let gateway = Arc::new(Gateway::new(ctx.clone(), &providers, &shutdown));
    let consumers = ctx.config.push.consumers_per_channel.max(1);
    let registry = ctx.workers.clone();
    let mut tasks = Vec::new();
    for channel in topics::OUTBOUND {
        let member = consumer::ChannelConsumer::member(&gateway, channel);
        for _ in 0..consumers {
            tasks.push(registry.spawn(
                consumer::ChannelConsumer::new(gateway.clone(), channel, member.clone()),
                shutdown.clone(),
            ));
        }
    }
    // Retries and quiet-hours deferrals wait in the delay store; this publishes them when due.
    tasks.push(registry.spawn(
        herald_usecases::delays::DelayPublisher::new(ctx.clone()),
        shutdown.clone(),
    ));
    tasks.push(registry.spawn(results::ResultCounter::new(ctx.clone()), shutdown.clone()));
    tasks.push(registry.spawn(cleanup::Cleanup::new(ctx.clone()), shutdown.clone()));
    tracing::info!(
        consumers_per_channel = consumers,
        fcm = providers.fcm.is_some(),
        apns = providers.apns.is_some(),
        email = providers.email.is_some(),
        sms = providers.sms.is_some(),
        "push gateway running"
    );
    // Dropping this future (a test standing for a node that dies) drops the handles, and
    // with them the workers.
    for t in tasks {
        let _ = t.join().await;
    }
}
