//! Conformance suite of the `Throttle` port: a burst at once, then sends spaced at the rate,
//! limits apart per key; on Redis, every handle (every node) shares one rate.
//!
//! Always in process; on Redis when `HERALD_TEST_REDIS_URL` is set (each case under a key
//! prefix of its own). Waits are computed, never slept: a case takes milliseconds.

mod common;

use herald_core::ports::{Rate, Throttle};
use std::sync::Arc;
use std::time::Duration;

const RATE: Rate = Rate {
    per_second: 100,
    burst: 10,
};

/// `wait` is `expected` less the little time that passed since the reservations began.
fn about(wait: Duration, expected: Duration) {
    let slack = Duration::from_millis(25);
    assert!(
        wait <= expected && wait + slack >= expected,
        "waited {wait:?}, expected about {expected:?}"
    );
}

pub mod cases {
    use super::*;

    pub async fn a_burst_goes_at_once_then_sends_are_spaced_at_the_rate(t: Arc<dyn Throttle>) {
        for _ in 0..10 {
            assert_eq!(t.reserve("fcm", 1, RATE).await.unwrap(), Duration::ZERO);
        }
        about(
            t.reserve("fcm", 1, RATE).await.unwrap(),
            Duration::from_millis(10),
        );
        about(
            t.reserve("fcm", 5, RATE).await.unwrap(),
            Duration::from_millis(60),
        );
    }

    /// At 400,000 sends a second the interval is 2.5 µs: kept exactly, not rounded to whole
    /// microseconds (which would let 500,000 a second through).
    pub async fn fractions_of_a_microsecond_are_kept(t: Arc<dyn Throttle>) {
        let fast = Rate {
            per_second: 400_000,
            burst: 4_000,
        };
        assert_eq!(t.reserve("sms", 4_000, fast).await.unwrap(), Duration::ZERO);
        let wait = t.reserve("sms", 4_000, fast).await.unwrap();
        assert!(
            wait <= Duration::from_millis(10) && wait >= Duration::from_micros(9_000),
            "waited {wait:?}, expected about 10 ms"
        );
    }

    pub async fn limits_are_kept_apart_per_key(t: Arc<dyn Throttle>) {
        assert_eq!(t.reserve("fcm", 10, RATE).await.unwrap(), Duration::ZERO);
        assert_eq!(t.reserve("apns", 10, RATE).await.unwrap(), Duration::ZERO);
        about(
            t.reserve("fcm", 10, RATE).await.unwrap(),
            Duration::from_millis(100),
        );
    }
}

macro_rules! throttle_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;

            #[tokio::test]
            async fn a_burst_goes_at_once_then_sends_are_spaced_at_the_rate() {
                if let Some(t) = $make.await {
                    cases::a_burst_goes_at_once_then_sends_are_spaced_at_the_rate(t).await;
                }
            }

            #[tokio::test]
            async fn fractions_of_a_microsecond_are_kept() {
                if let Some(t) = $make.await {
                    cases::fractions_of_a_microsecond_are_kept(t).await;
                }
            }

            #[tokio::test]
            async fn limits_are_kept_apart_per_key() {
                if let Some(t) = $make.await {
                    cases::limits_are_kept_apart_per_key(t).await;
                }
            }
        }
    };
}

async fn memory() -> Option<Arc<dyn Throttle>> {
    Some(herald_storage::open_throttle(None).await.unwrap())
}

async fn redis() -> Option<Arc<dyn Throttle>> {
    let url = common::redis_test_url()?;
    Some(
        herald_storage::open_throttle(Some(&url))
            .await
            .expect("HERALD_TEST_REDIS_URL is set but Redis is unusable"),
    )
}

throttle_conformance!(in_process, memory());
throttle_conformance!(redis, redis());

/// Two gateway nodes (two handles on one Redis) send through one provider account: the second
/// node's send waits for what the first one used, so together they keep the one rate.
#[tokio::test]
async fn nodes_sharing_a_redis_throttle_share_one_rate() {
    let Some(url) = common::redis_test_url() else {
        return;
    };
    let a = herald_storage::open_throttle(Some(&url)).await.unwrap();
    let b = herald_storage::open_throttle(Some(&url)).await.unwrap();
    assert_eq!(a.reserve("fcm", 10, RATE).await.unwrap(), Duration::ZERO);
    about(
        b.reserve("fcm", 1, RATE).await.unwrap(),
        Duration::from_millis(10),
    );
    about(
        a.reserve("fcm", 1, RATE).await.unwrap(),
        Duration::from_millis(20),
    );
}
