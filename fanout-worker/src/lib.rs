//! Herald's fan-out role (DESIGN.md flows 1–3): the scheduler that releases campaigns when
//! they are due, the dispatcher that pages through a campaign's audience by key and cuts
//! batches onto the bus under a rate limiter, the batch workers that turn a batch into
//! notification rows and channel messages, and the broadcast store-once path.
//!
//! It talks to the world only through the ports of `herald_core::Context`; it owns no HTTP
//! routes (campaign endpoints live in `herald-api`) and no storage code. Every step is safe to
//! repeat: batches are identified by campaign and number, notification ids are derived from
//! campaign and user, and counters are added once per batch, so a crash anywhere is recovered
//! by redelivery.

pub mod dispatcher;
pub mod lifecycle;
mod pacing;
pub mod scheduler;
pub mod worker;

pub use pacing::Pacer;
pub use worker::process_batch;

use herald_core::Context;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a dispatcher holds a campaign's lease before another may take it over; the
/// heartbeat renews it every third of that while the dispatcher works, so this is the takeover
/// delay after a crash.
pub const DISPATCH_LEASE: Duration = Duration::from_secs(15);

/// Runs the fan-out role until `shutdown`: the scheduler, two dispatchers and the batch
/// workers (`fanout.workers`, default twice the number of cores), each under the worker runner of
/// `herald_core::worker` (restarted after a panic, backed off after errors, reported in
/// `/readyz`).
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    // Twice the cores: a worker spends much of a batch waiting (for the file's writer, for a
    // reader connection, for a blocking thread), so one per core left a core idle about a
    // quarter of a 1M fan-out; two per core were 10 % faster (loadtest/README.md).
    let workers = ctx.config.fanout.workers.unwrap_or_else(|| {
        2 * std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let registry = ctx.workers.clone();
    let mut tasks = vec![registry.spawn(scheduler::Scheduler::new(ctx.clone()), shutdown.clone())];
    let hints = dispatcher::Dispatcher::hints(&ctx);
    for _ in 0..2 {
        tasks.push(registry.spawn(
            dispatcher::Dispatcher::with_hints(ctx.clone(), hints.clone()),
            shutdown.clone(),
        ));
    }
    // Batches retried after a backoff wait in the delay store; this publishes them when due.
    tasks.push(registry.spawn(
        herald_usecases::delays::DelayPublisher::new(ctx.clone()),
        shutdown.clone(),
    ));
    // Digests of event rules, sent when their window ends.
    tasks.push(registry.spawn(
        herald_usecases::digests::DigestSender::new(ctx.clone()),
        shutdown.clone(),
    ));
    let cache = worker::CampaignCache::default();
    let batches = worker::BatchWorker::consumer(&ctx);
    for _ in 0..workers.max(1) {
        tasks.push(registry.spawn(
            worker::BatchWorker::new(ctx.clone(), cache.clone(), batches.clone()),
            shutdown.clone(),
        ));
    }
    tasks.push(registry.spawn(
        herald_usecases::ops::LagGauges::new(ctx.ports.clone()),
        shutdown.clone(),
    ));
    tracing::info!(workers, "fan-out role running");
    // Dropping this future (a test standing for a node that dies) drops the handles, and
    // with them the workers.
    for t in tasks {
        let _ = t.join().await;
    }
}
