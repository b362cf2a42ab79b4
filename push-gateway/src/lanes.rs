//! A lane per provider: sends from every consumer are grouped (up to `size` dispatches, or
//! what arrived within `window` of the first one), paced by the provider's rate limit and
//! handed to the provider one group at a time, a few groups in flight. Grouping is what lets a
//! handful of small campaigns share one burst of HTTP/2 streams instead of trickling out.
//!
//! The rate is reserved from the [`Throttle`] port, keyed by provider: in-process it is this
//! node's alone; on Redis every gateway node's sends count against the one rate. While the
//! throttle cannot be reached, the lane paces itself with a local limiter at the whole rate
//! (as a single node would), so sending neither stops nor runs unlimited.

use crate::provider::{Dispatch, Outcome, Provider};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::ports::{Rate, Throttle};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// How long a reservation may take before the lane paces itself instead.
const THROTTLE_TIMEOUT: Duration = Duration::from_millis(250);

/// Groups handed to a provider at once; each is bounded by the provider's own concurrency.
const GROUPS_IN_FLIGHT: usize = 8;

type Job = (Dispatch, oneshot::Sender<Outcome>);

/// The entry to one provider. Cloning shares the lane.
#[derive(Clone)]
pub struct Lane {
    name: &'static str,
    tx: mpsc::Sender<Job>,
}

impl Lane {
    /// Starts the lane's grouping task. `rate_per_s` of 0 means no rate limit.
    pub fn start(
        provider: Arc<dyn Provider>,
        size: usize,
        window: Duration,
        rate_per_s: u32,
        throttle: Arc<dyn Throttle>,
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
        tokio::spawn(group_loop(provider, rx, size, window, pacing.map(Arc::new)));
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
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if let Some(pacing) = &pacing {
            pacing.ready(provider.name(), group.len() as u32).await;
        }
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
        let lane = Lane::start(rec.clone(), 500, Duration::from_millis(100), 0, throttle());
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
        let lane = Lane::start(rec.clone(), 500, Duration::from_millis(200), 0, throttle());
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
    async fn the_rate_limit_spaces_groups_out() {
        let rec = Arc::new(Recorder::default());
        // 1,000 sends/s with a burst of 100: 1,050 sends need about 0.95 s.
        let lane = Lane::start(rec.clone(), 50, Duration::ZERO, 1000, throttle());
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
            nodes.push(Lane::start(rec.clone(), 50, Duration::ZERO, 1000, throttle));
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
        let lane = Lane::start(rec.clone(), 50, Duration::ZERO, 1000, Arc::new(Silent));
        let outcomes = tokio::time::timeout(
            Duration::from_secs(10),
            lane.send((0..100).map(|i| dispatch(&format!("ok-{i}"))).collect()),
        )
        .await
        .expect("sends go on, paced locally");
        assert!(outcomes.iter().all(|o| *o == Outcome::Sent));
    }
}
