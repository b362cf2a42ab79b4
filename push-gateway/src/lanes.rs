//! A lane per provider: sends from every consumer are grouped (up to `size` dispatches, or
//! what arrived within `window` of the first one), paced by the provider's rate limit and
//! handed to the provider one group at a time, a few groups in flight. Grouping is what lets a
//! handful of small campaigns share one burst of HTTP/2 streams instead of trickling out.
//!
//! The rate is reserved from the [`Throttle`] port, keyed by provider: in-process it is this
//! node's alone; on Redis every gateway node's sends count against the one rate. While the
//! throttle cannot be reached, the lane paces itself with a local limiter at the whole rate
//! (as a single node would), so sending neither stops nor runs unlimited.
//!
//! Once the gateway is stopping, a group not yet handed to the provider is not sent: each of
//! its sends is answered as a transient failure, so the message it came from finishes at
//! once (what was sent is reported and the message marked processed; the rest goes out as
//! the message's next attempt, from the delay store). Groups already with the provider finish.
//! Without this, a message whose sends outlast the shutdown grace was dropped mid-way, and
//! the next gateway sent all of it again, its sent part twice.

use crate::provider::{Dispatch, Outcome, Provider};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::ports::{Rate, Throttle};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a reservation may take before the lane paces itself instead.
const THROTTLE_TIMEOUT: Duration = Duration::from_millis(250);

/// Groups handed to a provider at once; each is bounded by the provider's own concurrency.
const GROUPS_IN_FLIGHT: usize = 8;

/// Why a send not handed to the provider before the gateway stopped goes to the next attempt.
pub const STOPPING: &str = "the gateway was stopping before this send went out";

type Job = (Dispatch, oneshot::Sender<Outcome>);

/// The entry to one provider. Cloning shares the lane.
#[derive(Clone)]
pub struct Lane {
    name: &'static str,
    tx: mpsc::Sender<Job>,
}

impl Lane {
    /// Starts the lane's grouping task. `rate_per_s` of 0 means no rate limit. Once
    /// `stopping` is cancelled, groups not yet handed to the provider are not sent.
    pub fn start(
        provider: Arc<dyn Provider>,
        size: usize,
        window: Duration,
        rate_per_s: u32,
        throttle: Arc<dyn Throttle>,
        stopping: CancellationToken,
    ) -> Lane {
        let size = size.max(1);
        let (tx, rx) = mpsc::channel(size * 4);
        let pacing = NonZeroU32::new(rate_per_s).map(|per_second| {
            // A tenth of a second of sends may go at once, and at least a whole group, so a
            // group can always be granted.
            let burst = (per_second.get() / 10).max(size as u32).max(1);
            Pacing {
                throttle,
                rate: Rate {
                    per_second: per_second.get(),
                    burst,
                },
                fallback: RateLimiter::direct(
                    Quota::per_second(per_second)
                        .allow_burst(NonZeroU32::new(burst).expect("non-zero")),
                ),
            }
        });
        let name = provider.name();
        tokio::spawn(group_loop(
            provider,
            rx,
            size,
            window,
            pacing.map(Arc::new),
            stopping,
        ));
        Lane { name, tx }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sends the dispatches through the lane; one outcome per dispatch, in order.
    pub async fn send(&self, dispatches: Vec<Dispatch>) -> Vec<Outcome> {
        let mut waiting = Vec::with_capacity(dispatches.len());
        for d in dispatches {
            let (done, outcome) = oneshot::channel();
            if self.tx.send((d, done)).await.is_err() {
                waiting.push(None);
                continue;
            }
            waiting.push(Some(outcome));
        }
        let mut outcomes = Vec::with_capacity(waiting.len());
        for w in waiting {
            outcomes.push(match w {
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Outcome::retry("gateway shutting down", None)),
                None => Outcome::retry("gateway shutting down", None),
            });
        }
        outcomes
    }
}

/// A lane's rate: reserved from the throttle, or from the local limiter while the throttle
/// fails.
struct Pacing {
    throttle: Arc<dyn Throttle>,
    rate: Rate,
    fallback: DefaultDirectRateLimiter,
}

impl Pacing {
    /// Waits until `n` sends (at most the burst) may go to provider `name`.
    async fn ready(&self, name: &'static str, n: u32) {
        // A throttle that does not answer (a partition: no error, no reply) must not stall
        // the lane; after this long it counts as unreachable.
        let reserved =
            tokio::time::timeout(THROTTLE_TIMEOUT, self.throttle.reserve(name, n, self.rate))
                .await
                .unwrap_or_else(|_| {
                    Err(herald_core::Error::new(
                        herald_core::ErrorKind::Unavailable,
                        "the throttle did not answer in time",
                    ))
                });
        match reserved {
            Ok(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "the throttle is unavailable; pacing this node alone");
                metrics::counter!("herald_push_throttle_fallbacks_total", "provider" => name)
                    .increment(1);
                if let Some(n) = NonZeroU32::new(n) {
                    // The burst is at least a group, so this cannot fail.
                    let _ = self.fallback.until_n_ready(n).await;
                }
            }
        }
    }
}

async fn group_loop(
    provider: Arc<dyn Provider>,
    mut rx: mpsc::Receiver<Job>,
    size: usize,
    window: Duration,
    pacing: Option<Arc<Pacing>>,
    stopping: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let mut group = Vec::with_capacity(size);
        group.push(first);
        let deadline = Instant::now() + window;
        while group.len() < size {
            match rx.try_recv() {
                Ok(job) => {
                    group.push(job);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if window.is_zero() {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => group.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => Some(permit),
                Err(_) => return,
            },
            _ = stopping.cancelled() => None,
        };
        if let (Some(pacing), false) = (&pacing, stopping.is_cancelled()) {
            tokio::select! {
                _ = pacing.ready(provider.name(), group.len() as u32) => {}
                _ = stopping.cancelled() => {}
            }
        }
        let Some(permit) = permit.filter(|_| !stopping.is_cancelled()) else {
            metrics::counter!("herald_push_sends_deferred_at_shutdown_total", "provider" => provider.name())
                .increment(group.len() as u64);
            for (_, done) in group {
                let _ = done.send(Outcome::retry(STOPPING, None));
            }
            continue;
        };
        let provider = provider.clone();
        tokio::spawn(async move {
            let (dispatches, senders): (Vec<Dispatch>, Vec<oneshot::Sender<Outcome>>) =
                group.into_iter().unzip();
            metrics::histogram!("herald_push_group_size", "provider" => provider.name())
                .record(dispatches.len() as f64);
            let outcomes = provider.send(&dispatches).await;
            let mut outcomes = outcomes.into_iter();
            for tx in senders {
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| Outcome::retry("provider returned too few outcomes", None));
                let _ = tx.send(outcome);
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Arc<dyn Throttle> {
        Arc::new(herald_storage::memory::MemoryThrottle::default())
    }
    use crate::provider::{Destination, Envelope};
    use async_trait::async_trait;
    use herald_core::model::{Channel, Platform, Priority};
    use parking_lot::Mutex;

    /// Records the group sizes it was called with and echoes Sent.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<usize>>);

    #[async_trait]
    impl Provider for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn send(&self, d: &[Dispatch]) -> Vec<Outcome> {
            self.0.lock().push(d.len());
            d.iter()
                .map(|d| {
                    if d.destination.target().starts_with("bad") {
                        Outcome::failed("bad")
                    } else {
                        Outcome::Sent
                    }
                })
                .collect()
        }
    }

    fn dispatch(token: &str) -> Dispatch {
        Dispatch {
            envelope: Arc::new(Envelope {
                campaign_id: "c".into(),
                channel: Channel::Push,
                category: None,
                priority: Priority::Normal,
                expires_at: None,
            }),
            user_id: "u".into(),
            notification_id: uuid::Uuid::nil(),
            destination: Destination::Device {
                platform: Platform::Fcm,
                token: token.into(),
            },
            title: None,
            body: "b".into(),
            html: None,
            data: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn sends_are_cut_into_groups_of_at_most_the_size_and_outcomes_keep_order() {
        let rec = Arc::new(Recorder::default());
        let lane = Lane::start(
            rec.clone(),
            500,
            Duration::from_millis(100),
            0,
            throttle(),
            CancellationToken::new(),
        );
        let tokens: Vec<String> = (0..1200)
            .map(|i| {
                if i % 7 == 0 {
                    format!("bad-{i}")
                } else {
                    format!("ok-{i}")
                }
            })
            .collect();
        let outcomes = lane
            .send(tokens.iter().map(|t| dispatch(t)).collect())
            .await;
        for (t, o) in tokens.iter().zip(&outcomes) {
            assert_eq!(t.starts_with("bad"), *o != Outcome::Sent, "{t}");
        }
        let groups = rec.0.lock().clone();
        assert_eq!(groups.iter().sum::<usize>(), 1200);
        assert!(groups.iter().all(|g| *g <= 500), "{groups:?}");
    }

    #[tokio::test]
    async fn small_sends_arriving_within_the_window_share_a_group() {
        let rec = Arc::new(Recorder::default());
        let lane = Lane::start(
            rec.clone(),
            500,
            Duration::from_millis(200),
            0,
            throttle(),
            CancellationToken::new(),
        );
        let mut tasks = Vec::new();
        for i in 0..5 {
            let lane = lane.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                lane.send(vec![dispatch(&format!("ok-{i}"))]).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), vec![Outcome::Sent]);
        }
        assert_eq!(rec.0.lock().clone(), vec![5]);
    }

    #[tokio::test]
    async fn groups_not_yet_with_the_provider_when_the_gateway_stops_are_answered_retry_unsent() {
        let rec = Arc::new(Recorder::default());
        let stopping = CancellationToken::new();
        // 100 sends/s with a burst of 50 (one group): the first group goes at once, the next
        // ones wait for the rate.
        let lane = Lane::start(
            rec.clone(),
            50,
            Duration::ZERO,
            100,
            throttle(),
            stopping.clone(),
        );
        let sending = tokio::spawn({
            let lane = lane.clone();
            async move {
                lane.send((0..500).map(|i| dispatch(&format!("ok-{i}"))).collect())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        stopping.cancel();
        let outcomes = tokio::time::timeout(Duration::from_secs(2), sending)
            .await
            .expect("the sends end as soon as the gateway stops")
            .unwrap();
        let sent = rec.0.lock().iter().sum::<usize>();
        assert!((50..500).contains(&sent), "sent {sent}");
        assert_eq!(
            outcomes.iter().filter(|o| **o == Outcome::Sent).count(),
            sent,
            "exactly the sends the provider got are answered sent"
        );
        assert!(outcomes
            .iter()
            .filter(|o| **o != Outcome::Sent)
            .all(|o| *o == Outcome::retry(STOPPING, None)));
        // Stopped, the lane sends nothing more.
        let late = lane.send(vec![dispatch("ok-late")]).await;
        assert_eq!(late, vec![Outcome::retry(STOPPING, None)]);
        assert_eq!(rec.0.lock().iter().sum::<usize>(), sent);
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_groups_out() {
        let rec = Arc::new(Recorder::default());
        // 1,000 sends/s with a burst of 100: 1,050 sends need about 0.95 s.
        let lane = Lane::start(
            rec.clone(),
            50,
            Duration::ZERO,
            1000,
            throttle(),
            CancellationToken::new(),
        );
        let started = Instant::now();
        lane.send((0..1050).map(|i| dispatch(&format!("ok-{i}"))).collect())
            .await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
    }

    /// Two gateway nodes (two lanes, each with its own handle on one Redis) send through one
    /// provider account: together they keep its one rate instead of each using all of it.
    #[tokio::test]
    async fn lanes_on_two_nodes_sharing_a_redis_throttle_keep_one_rate() {
        let Ok(raw) = std::env::var("HERALD_TEST_REDIS_URL") else {
            return;
        };
        let sep = if raw.contains('?') { '&' } else { '?' };
        let url = herald_core::config::Secret::new(format!(
            "{raw}{sep}prefix=herald-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let rec = Arc::new(Recorder::default());
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let throttle = herald_storage::open_throttle(Some(&url))
                .await
                .expect("HERALD_TEST_REDIS_URL is set but Redis is unusable");
            nodes.push(Lane::start(
                rec.clone(),
                50,
                Duration::ZERO,
                1000,
                throttle,
                CancellationToken::new(),
            ));
        }
        // 1,000 sends/s with a burst of 100 for both together: 1,050 sends need about 0.95 s
        // (each node alone would be done with its 525 in about 0.43 s).
        let started = Instant::now();
        let sends = nodes.iter().enumerate().map(|(n, lane)| {
            lane.send((0..525).map(|i| dispatch(&format!("ok-{n}-{i}"))).collect())
        });
        futures::future::join_all(sends).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
        assert_eq!(rec.0.lock().iter().sum::<usize>(), 1050);
    }

    /// A throttle that never answers (a partition: no error, no reply).
    struct Silent;

    #[async_trait::async_trait]
    impl Throttle for Silent {
        async fn reserve(&self, _: &str, _: u32, _: Rate) -> herald_core::Result<Duration> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_throttle_that_does_not_answer_does_not_stall_the_lane() {
        let rec = Arc::new(Recorder::default());
        let lane = Lane::start(
            rec.clone(),
            50,
            Duration::ZERO,
            1000,
            Arc::new(Silent),
            CancellationToken::new(),
        );
        let outcomes = tokio::time::timeout(
            Duration::from_secs(10),
            lane.send((0..100).map(|i| dispatch(&format!("ok-{i}"))).collect()),
        )
        .await
        .expect("sends go on, paced locally");
        assert!(outcomes.iter().all(|o| *o == Outcome::Sent));
    }
}
