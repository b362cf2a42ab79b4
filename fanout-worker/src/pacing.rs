//! Pacing of the batcher: a `governor` rate limiter at the strategy's users per second, slowed
//! to a crawl while the channel queues it feeds are deeper than `throttle.max_queue_depth`,
//! back to full pace as soon as they drain.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::model::{Channel, Strategy};
use herald_core::ports::Bus;
use herald_core::topics;
use std::num::NonZeroU32;
use std::time::Duration;

/// While a channel queue is over its limit, one batch goes out per this interval.
const BACKPRESSURE_INTERVAL: Duration = Duration::from_secs(1);
/// A queue found under its limit is not looked at again for this long: reading a group's lag
/// costs round trips on a broker (metadata, committed offsets, watermarks per partition), and
/// a batch is cut every few milliseconds.
const UNDER_LIMIT_FOR: Duration = Duration::from_millis(250);

/// Metrics carry no campaign id (an unbounded label): the pace is summed per strategy over
/// the campaigns being cut, which the gauges `herald_fanout_campaigns_cutting{strategy}` and
/// `herald_fanout_pace_users_per_second{strategy}` show; both are given back on drop, however
/// the cutting ends.
pub struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    max_depth: u64,
    channels: Vec<Channel>,
    strategy: &'static str,
    pace: f64,
    /// When the queues were last found under their limit.
    under_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Pacer {
    /// `users_per_s` of `None` lifts the rate limit; `max_depth` of 0 lifts the backpressure.
    pub fn new(
        strategy: Strategy,
        users_per_s: Option<u32>,
        batch_size: u32,
        max_depth: u64,
        channels: &[Channel],
    ) -> Self {
        let limiter = users_per_s.and_then(NonZeroU32::new).map(|rate| {
            // A batch must fit in the bucket, or `until_n_ready` could never grant it.
            let burst = NonZeroU32::new(rate.get().max(batch_size)).expect("non-zero");
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        let strategy = strategy.as_str();
        // An unthrottled campaign adds nothing to the paced rate.
        let pace = users_per_s.map_or(0.0, f64::from);
        metrics::gauge!("herald_fanout_campaigns_cutting", "strategy" => strategy).increment(1.0);
        metrics::gauge!("herald_fanout_pace_users_per_second", "strategy" => strategy)
            .increment(pace);
        Self {
            limiter,
            max_depth,
            channels: channels
                .iter()
                .copied()
                .filter(|c| topics::OUTBOUND.contains(c))
                .collect(),
            strategy,
            pace,
            under_at: std::sync::Mutex::new(None),
        }
    }

    /// Waits until `users` more users may be cut into a batch. Returns whether it slowed down
    /// because a channel queue was over its limit.
    pub async fn ready(&self, bus: &dyn Bus, users: u32) -> bool {
        let backpressure = self.max_depth > 0 && self.over_depth(bus).await;
        if backpressure {
            metrics::counter!("herald_fanout_backpressure_waits_total").increment(1);
            tokio::time::sleep(BACKPRESSURE_INTERVAL).await;
        }
        if let (Some(limiter), Some(n)) = (&self.limiter, NonZeroU32::new(users)) {
            // The burst is at least a batch, so this cannot fail for a batch-sized request.
            let _ = limiter.until_n_ready(n).await;
        }
        backpressure
    }

    async fn over_depth(&self, bus: &dyn Bus) -> bool {
        let fresh =
            |at: &Option<std::time::Instant>| at.is_some_and(|t| t.elapsed() < UNDER_LIMIT_FOR);
        if fresh(&self.under_at.lock().expect("not poisoned")) {
            return false;
        }
        let over = self.read_over_depth(bus).await;
        if !over {
            *self.under_at.lock().expect("not poisoned") = Some(std::time::Instant::now());
        }
        over
    }

    async fn read_over_depth(&self, bus: &dyn Bus) -> bool {
        for channel in &self.channels {
            match bus
                .lag(topics::channel_topic(*channel), topics::GATEWAY)
                .await
            {
                Ok(depth) if depth > self.max_depth => return true,
                Ok(_) => {}
                // A depth we cannot read is no reason to stop; the publish will tell.
                Err(e) => tracing::warn!(error = %e, "cannot read channel queue depth"),
            }
        }
        false
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        let strategy = self.strategy;
        metrics::gauge!("herald_fanout_campaigns_cutting", "strategy" => strategy).decrement(1.0);
        metrics::gauge!("herald_fanout_pace_users_per_second", "strategy" => strategy)
            .decrement(self.pace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::model::OutMessage;
    use std::time::Duration;

    #[tokio::test]
    async fn the_batcher_slows_while_a_channel_queue_is_over_its_limit_and_resumes_when_it_drains()
    {
        let dir = tempfile::tempdir().unwrap();
        let url = herald_storage::BackendUrl::embedded(dir.path(), "bus");
        let bus = herald_storage::open_bus(&url).await.unwrap();
        herald_core::topics::declare(bus.as_ref()).await.unwrap();
        let push = topics::channel_topic(Channel::Push);
        let msg = OutMessage {
            key: None,
            payload: b"{}".to_vec(),
        };
        bus.publish(push, &[msg.clone(), msg.clone(), msg])
            .await
            .unwrap();

        let pacer = Pacer::new(
            Strategy::Batch,
            None,
            1000,
            2,
            &[Channel::InApp, Channel::Push],
        );
        assert!(pacer.ready(bus.as_ref(), 1000).await, "3 queued > limit 2");

        // An in-app-only campaign does not feed the push queue: no reason to slow down.
        let in_app_only = Pacer::new(Strategy::Batch, None, 1000, 2, &[Channel::InApp]);
        assert!(!in_app_only.ready(bus.as_ref(), 1000).await);

        let member = bus.consumer(push, topics::GATEWAY).await.unwrap();
        let got = member.poll(10, Duration::ZERO).await.unwrap();
        let receipts: Vec<String> = got.into_iter().map(|d| d.receipt).collect();
        member.commit(&receipts).await.unwrap();
        assert!(
            !pacer.ready(bus.as_ref(), 1000).await,
            "drained: full pace again"
        );

        // A limit of 0 lifts the backpressure altogether.
        let unlimited = Pacer::new(Strategy::Batch, None, 1000, 0, &[Channel::Push]);
        assert!(!unlimited.ready(bus.as_ref(), 1000).await);
    }
}
