//! Retry delays: exponential backoff with "equal jitter" (half the step fixed, half random),
//! so retries of many sends that failed together spread out instead of returning as one wave,
//! yet never come back sooner than half the step. A provider's `Retry-After` wins when longer.

use rand::Rng;
use std::time::Duration;

/// Never wait longer than a day, whatever a provider asks for.
const CEILING: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The step of retry number `attempt` (0 for the first retry): `base * 2^attempt`, capped
    /// at `max`.
    pub fn step(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`: between half the step and the step, and at
    /// least what the provider asked for.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let step = self.step(attempt);
        let half = step / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=step - half);
        let d = half + jitter;
        retry_after.map_or(d, |ra| d.max(ra)).min(CEILING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            base: Duration::from_millis(1000),
            max: Duration::from_secs(60),
        }
    }

    #[test]
    fn steps_double_per_attempt_up_to_the_cap() {
        let b = b();
        assert_eq!(b.step(0), Duration::from_secs(1));
        assert_eq!(b.step(1), Duration::from_secs(2));
        assert_eq!(b.step(5), Duration::from_secs(32));
        assert_eq!(b.step(6), Duration::from_secs(60));
        assert_eq!(b.step(100), Duration::from_secs(60));
    }

    #[test]
    fn a_delay_stays_between_half_the_step_and_the_step() {
        let b = b();
        for attempt in 0..10 {
            let step = b.step(attempt);
            for _ in 0..200 {
                let d = b.delay(attempt, None);
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {attempt}: {d:?} of {step:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_delays_out() {
        let b = b();
        let distinct: std::collections::HashSet<Duration> =
            (0..50).map(|_| b.delay(4, None)).collect();
        assert!(distinct.len() > 10, "{}", distinct.len());
    }

    #[test]
    fn a_longer_retry_after_wins_and_a_shorter_one_does_not() {
        let b = b();
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert!(b.delay(3, Some(Duration::from_millis(1))) >= Duration::from_secs(4));
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(10 * 24 * 3600))),
            CEILING
        );
    }
}
