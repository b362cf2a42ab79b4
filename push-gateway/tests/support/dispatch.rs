//! What the provider suites hand a provider and how they read what comes back: envelopes and
//! dispatches with the suites' common defaults, provider limits, and assertions on outcomes.
//!
//! Include it with `#[path = "support/dispatch.rs"] mod dispatch;`. Each suite sets what its
//! channel needs (title, data, category…) on top of [`to`] with struct-update syntax.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use herald_core::config::ProviderLimits;
use herald_core::model::{Channel, Platform, Priority};
use herald_push::provider::{Destination, Dispatch, Envelope, Outcome, Provider};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The envelope of campaign `cmp-1` on `channel`: no category, no expiry.
pub fn envelope(channel: Channel, priority: Priority) -> Envelope {
    Envelope {
        campaign_id: "cmp-1".into(),
        channel,
        category: None,
        priority,
        expires_at: None,
    }
}

/// A dispatch of `body` to `destination` for user `u-1`, with a fresh notification id and no
/// title, HTML part or data.
pub fn to(envelope: &Arc<Envelope>, destination: Destination, body: &str) -> Dispatch {
    Dispatch {
        envelope: envelope.clone(),
        user_id: "u-1".into(),
        notification_id: uuid::Uuid::new_v4(),
        destination,
        title: None,
        body: body.into(),
        html: None,
        data: serde_json::json!({}),
    }
}

/// A device of `platform` with `token`.
pub fn device(platform: Platform, token: &str) -> Destination {
    Destination::Device {
        platform,
        token: token.into(),
    }
}

/// `concurrency` requests at once, each bounded by `timeout_ms`, no rate limit.
pub fn limits(concurrency: usize, timeout_ms: u64) -> ProviderLimits {
    ProviderLimits {
        concurrency,
        rate_per_s: 0,
        timeout_ms,
    }
}

/// `make(prefix-0)` … `make(prefix-{n-1})`.
pub fn numbered(prefix: &str, n: usize, make: impl Fn(&str) -> Dispatch) -> Vec<Dispatch> {
    (0..n).map(|i| make(&format!("{prefix}-{i}"))).collect()
}

/// Sends one dispatch; its one outcome.
pub async fn send_one(provider: &impl Provider, dispatch: Dispatch) -> Outcome {
    let mut outcomes = provider.send(&[dispatch]).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes.remove(0)
}

/// Sends `batch` from two callers at once through the same provider (so through its one
/// semaphore); the outcomes of both.
pub async fn send_from_two_callers(provider: &impl Provider, batch: &[Dispatch]) -> Vec<Outcome> {
    let (a, b) = tokio::join!(provider.send(batch), provider.send(batch));
    a.into_iter().chain(b).collect()
}

/// The metrics labels of `outcomes`, in order.
pub fn labels(outcomes: &[Outcome]) -> Vec<&'static str> {
    outcomes.iter().map(Outcome::label).collect()
}

pub fn assert_all_sent(outcomes: &[Outcome]) {
    assert!(outcomes.iter().all(|o| *o == Outcome::Sent), "{outcomes:?}");
}

/// The reason of a `Retry` that names no time to wait; panics on any other outcome.
pub fn retry_reason(outcome: Outcome) -> String {
    match outcome {
        Outcome::Retry {
            reason,
            after: None,
        } => reason,
        other => panic!("not a retry without Retry-After: {other:?}"),
    }
}

/// The reason of a `Failed`; panics on any other outcome.
pub fn failed_reason(outcome: Outcome) -> String {
    match outcome {
        Outcome::Failed { reason } => reason,
        other => panic!("not a failure: {other:?}"),
    }
}

/// The most requests a fake saw in flight at once were concurrent (at least two) and within
/// the provider's `limit`.
pub fn assert_concurrent_within(max_in_flight: usize, limit: usize) {
    assert!(
        (2..=limit).contains(&max_in_flight),
        "{max_in_flight} requests were in flight at once; the limit is {limit}"
    );
}

/// Awaits `send` and checks it came back well before the fakes' 5 s hang: the provider's
/// timeout cut it short.
pub async fn within_the_timeout<T>(send: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = send.await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout"
    );
    out
}

/// `dispatch`, to a server that answers too late, comes back within the provider's timeout as
/// `<provider> timeout`, to retry.
pub async fn assert_timed_out(provider: &impl Provider, dispatch: Dispatch) {
    let outcome = within_the_timeout(send_one(provider, dispatch)).await;
    let reason = format!("{} timeout", provider.name());
    assert_eq!(outcome, Outcome::retry(reason, None));
}

/// `dispatch`, to an address nothing listens on, comes back as a retry without Retry-After
/// whose reason starts with the provider's name.
pub async fn assert_unreachable(provider: &impl Provider, dispatch: Dispatch) {
    let reason = retry_reason(send_one(provider, dispatch).await);
    let name = provider.name();
    assert!(reason.starts_with(&format!("{name} ")), "{reason}");
}
