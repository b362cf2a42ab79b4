//! Seed 004's decision matrix: how a campaign reaches its audience, from the audience's size.

use crate::config::{StrategyConfig, ThrottleConfig};
use crate::model::{Audience, Strategy};
use serde::{Deserialize, Serialize};

/// What the client asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestedStrategy {
    /// Size the audience and follow the matrix.
    #[default]
    Auto,
    /// Store once for fan-out-on-read whatever the size (announcements).
    Broadcast,
}

/// Picks the strategy for an audience of `size` users.
///
/// | audience      | strategy                              |
/// |---------------|---------------------------------------|
/// | 0 – 1 user    | direct                                |
/// | 2 – batch_max | batch (one batch, unthrottled)        |
/// | up to the broadcast threshold | throttled            |
/// | above it, or `all` | broadcast (fan-out-on-read)      |
pub fn choose(
    size: u64,
    audience: &Audience,
    requested: RequestedStrategy,
    cfg: &StrategyConfig,
) -> Strategy {
    if requested == RequestedStrategy::Broadcast
        || matches!(audience, Audience::All(_))
        || size > cfg.broadcast_threshold
    {
        Strategy::Broadcast
    } else if size <= 1 {
        Strategy::Direct
    } else if size <= cfg.batch_max {
        Strategy::Batch
    } else {
        Strategy::Throttled
    }
}

/// The pace of the batcher in users per second for a strategy and size; `None` is unlimited.
pub fn pace(
    strategy: Strategy,
    size: u64,
    cfg: &StrategyConfig,
    throttle: &ThrottleConfig,
) -> Option<u32> {
    let rate = match strategy {
        Strategy::Direct | Strategy::Batch => return None,
        Strategy::Throttled if size > cfg.throttled_max => throttle.large_users_per_s,
        Strategy::Throttled => throttle.users_per_s,
        Strategy::Broadcast => throttle.background_users_per_s,
    };
    (rate > 0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> Audience {
        Audience::Segment("s".into())
    }

    #[test]
    fn the_strategy_changes_exactly_at_each_boundary() {
        let cfg = StrategyConfig::default();
        let auto = RequestedStrategy::Auto;
        assert_eq!(
            choose(1, &Audience::User("u".into()), auto, &cfg),
            Strategy::Direct
        );
        assert_eq!(choose(0, &seg(), auto, &cfg), Strategy::Direct);
        assert_eq!(choose(2, &seg(), auto, &cfg), Strategy::Batch);
        assert_eq!(choose(1_000, &seg(), auto, &cfg), Strategy::Batch);
        assert_eq!(choose(1_001, &seg(), auto, &cfg), Strategy::Throttled);
        assert_eq!(choose(1_000_000, &seg(), auto, &cfg), Strategy::Throttled);
        assert_eq!(choose(1_000_001, &seg(), auto, &cfg), Strategy::Broadcast);
        assert_eq!(
            choose(3, &Audience::All(true), auto, &cfg),
            Strategy::Broadcast
        );
        assert_eq!(
            choose(1, &seg(), RequestedStrategy::Broadcast, &cfg),
            Strategy::Broadcast
        );
    }

    #[test]
    fn large_throttled_audiences_get_the_heavy_throttle_and_zero_lifts_it() {
        let cfg = StrategyConfig::default();
        let mut t = ThrottleConfig::default();
        assert_eq!(pace(Strategy::Batch, 500, &cfg, &t), None);
        assert_eq!(
            pace(Strategy::Throttled, 50_000, &cfg, &t),
            Some(t.users_per_s)
        );
        assert_eq!(
            pace(Strategy::Throttled, 500_000, &cfg, &t),
            Some(t.large_users_per_s)
        );
        t.large_users_per_s = 0;
        assert_eq!(pace(Strategy::Throttled, 500_000, &cfg, &t), None);
    }
}
