//! The delivery log: what every delivery report adds to a per-minute, per-channel rollup
//! ([`DeliveryLogEntry`] in, [`MinuteRollup`] out), the latency histogram's fixed buckets, and
//! the campaign figures the analytics summary reads ([`CampaignStats`]).
//!
//! Written by the push gateway's result counter once per report key (a redelivered report adds
//! nothing); read by `/v1/analytics/…` and `/v1/health/status` (`herald-usecases::analytics`).

use crate::model::{Channel, Strategy};
use chrono::{DateTime, DurationRound, Utc};
use serde::{Deserialize, Serialize};

/// Upper bounds (seconds, inclusive) of the delivery latency buckets, from campaign start to
/// provider acceptance; a last bucket holds everything slower.
pub const LATENCY_BOUNDS_SECS: [f64; 15] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// How many latency buckets there are: one per bound and one above the last.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_SECS.len() + 1;

/// Failure reasons kept per report: enough to show what went wrong, bounded however large the
/// message was.
pub const FAILURES_PER_REPORT: usize = 10;

/// The bucket of a latency.
pub fn latency_bucket(secs: f64) -> usize {
    LATENCY_BOUNDS_SECS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(LATENCY_BOUNDS_SECS.len())
}

/// The minute `at` falls in.
pub fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(at)
}

/// One delivery report as the log records it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryLogEntry {
    /// The report's key: recorded once.
    pub key: String,
    pub channel: Channel,
    /// When the provider answered (the report's time); its minute is the rollup's.
    pub at: DateTime<Utc>,
    pub counts: DeliveryLogCounts,
    /// The latency bucket of this report's sends (`sent` of them), and the sum of their
    /// latencies in milliseconds; none if nothing was sent.
    pub latency: Option<(usize, u64)>,
    /// At most [`FAILURES_PER_REPORT`] failures.
    pub failures: Vec<LoggedFailure>,
}

/// The counters of a rollup (and of one report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryLogCounts {
    /// Delivery reports recorded.
    pub reports: u64,
    /// Sends the provider accepted.
    pub sent: u64,
    /// Sends that failed for good (every class below included).
    pub failed: u64,
    /// … of which the provider called the token or address invalid.
    pub invalid_tokens: u64,
    /// … of which went to the dead letters (attempts exhausted, provider not configured).
    pub dead_lettered: u64,
    /// … of which had nothing to send to (no device, no address) or expired before delivery.
    pub unreachable: u64,
    /// Sends that failed for now and were scheduled again (counted again when retried).
    pub retried: u64,
    /// Sum over the reports of the wall time of their provider calls, in milliseconds.
    pub provider_ms: u64,
}

impl DeliveryLogCounts {
    /// Failures of no other class: the provider refused the send.
    pub fn rejected(&self) -> u64 {
        self.failed
            .saturating_sub(self.invalid_tokens)
            .saturating_sub(self.dead_lettered)
            .saturating_sub(self.unreachable)
    }

    /// Sends that reached a provider (or its dead letters): what a provider's health is
    /// judged on, recipients with nothing to send to left out.
    pub fn attempted(&self) -> u64 {
        (self.sent + self.failed).saturating_sub(self.unreachable)
    }

    pub fn add(&mut self, o: &DeliveryLogCounts) {
        self.reports += o.reports;
        self.sent += o.sent;
        self.failed += o.failed;
        self.invalid_tokens += o.invalid_tokens;
        self.dead_lettered += o.dead_lettered;
        self.unreachable += o.unreachable;
        self.retried += o.retried;
        self.provider_ms += o.provider_ms;
    }

    /// Mean wall time of one channel message's provider calls, in seconds.
    pub fn provider_mean_secs(&self) -> Option<f64> {
        (self.reports > 0).then(|| self.provider_ms as f64 / self.reports as f64 / 1000.0)
    }
}

/// One failed send kept in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedFailure {
    pub at: DateTime<Utc>,
    pub channel: Channel,
    pub campaign_id: String,
    pub user_id: String,
    /// Device token, address or webhook id.
    pub target: String,
    pub reason: String,
}

/// A channel's deliveries in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteRollup {
    pub minute: DateTime<Utc>,
    pub channel: Channel,
    pub counts: DeliveryLogCounts,
    /// Sends per latency bucket ([`LATENCY_BOUNDS_SECS`]).
    pub latency: [u64; LATENCY_BUCKETS],
    /// Sum of the sends' latencies in milliseconds.
    pub latency_ms_sum: u64,
}

impl MinuteRollup {
    pub fn empty(minute: DateTime<Utc>, channel: Channel) -> Self {
        Self {
            minute,
            channel,
            counts: DeliveryLogCounts::default(),
            latency: [0; LATENCY_BUCKETS],
            latency_ms_sum: 0,
        }
    }

    pub fn add(&mut self, o: &MinuteRollup) {
        self.counts.add(&o.counts);
        for (a, b) in self.latency.iter_mut().zip(o.latency) {
            *a += b;
        }
        self.latency_ms_sum += o.latency_ms_sum;
    }

    /// The latency below which `q` (0–1) of the sends fell, as the upper bound of its bucket
    /// (seconds); `None` if nothing was sent, infinity if it lies above the last bound.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_SECS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// Mean latency of the sends in seconds.
    pub fn latency_mean(&self) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        (total > 0).then(|| self.latency_ms_sum as f64 / total as f64 / 1000.0)
    }
}

/// Campaigns created in a window, by strategy: what the summary says about audiences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignStats {
    pub strategy: Strategy,
    pub campaigns: u64,
    /// Sum of their audience sizes.
    pub audience: u64,
    pub notifications_written: u64,
    pub skipped_opted_out: u64,
    pub deferred_quiet_hours: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_bucket_of_their_upper_bound() {
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(0.05), 0);
        assert_eq!(latency_bucket(0.051), 1);
        assert_eq!(latency_bucket(2.0), 5);
        assert_eq!(latency_bucket(1e9), LATENCY_BOUNDS_SECS.len());
    }

    #[test]
    fn quantiles_are_read_from_the_histogram() {
        let mut r = MinuteRollup::empty(Utc::now(), Channel::Push);
        assert_eq!(r.latency_quantile(0.95), None);
        r.latency[latency_bucket(0.3)] = 90;
        r.latency[latency_bucket(4.0)] = 10;
        r.latency_ms_sum = 90 * 300 + 10 * 4000;
        assert_eq!(r.latency_quantile(0.5), Some(0.5));
        assert_eq!(r.latency_quantile(0.9), Some(0.5));
        assert_eq!(r.latency_quantile(0.95), Some(5.0));
        assert!((r.latency_mean().unwrap() - 0.67).abs() < 1e-9);
    }

    #[test]
    fn rejected_sends_are_the_failures_of_no_other_class() {
        let c = DeliveryLogCounts {
            sent: 20,
            failed: 10,
            invalid_tokens: 3,
            dead_lettered: 2,
            unreachable: 1,
            ..Default::default()
        };
        assert_eq!(c.rejected(), 4);
        assert_eq!(c.attempted(), 29);
    }
}
