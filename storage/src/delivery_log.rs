//! What both SQL engines share of the delivery log (`DeliveryStore::record_delivery_log` and
//! friends): the rollup rows and histogram rows they read, merged into
//! [`MinuteRollup`]s, and the failures as stored.

use crate::corrupt;
use crate::time::from_micros;
use herald_core::analytics::{DeliveryLogCounts, LoggedFailure, MinuteRollup, LATENCY_BUCKETS};
use herald_core::model::Channel;
use herald_core::Result;
use std::collections::BTreeMap;

/// The newest failures of a channel since a time (both engines speak this SQL).
pub(crate) const RECENT_FAILURES: &str = "SELECT spec FROM delivery_failures \
     WHERE channel = ? AND at >= ? ORDER BY at DESC, id DESC LIMIT ?";

/// One rollup row as read (shards already added up): minute (µs), channel, counters,
/// latency sum (ms).
pub(crate) type RollupRow = (i64, String, DeliveryLogCounts, u64);

/// One histogram row as read: minute (µs), channel, bucket, sends.
pub(crate) type LatencyRow = (i64, String, i64, u64);

/// The rollups of `rows` with their histograms, by minute then channel. A row of an unknown
/// channel (written by a newer version) or bucket is skipped.
pub(crate) fn merge(rows: Vec<RollupRow>, latency: Vec<LatencyRow>) -> Vec<MinuteRollup> {
    let mut out: BTreeMap<(i64, Channel), MinuteRollup> = BTreeMap::new();
    for (minute, channel, counts, latency_ms_sum) in rows {
        let Ok(channel) = channel.parse::<Channel>() else {
            continue;
        };
        let r = out
            .entry((minute, channel))
            .or_insert_with(|| MinuteRollup::empty(from_micros(minute), channel));
        r.counts.add(&counts);
        r.latency_ms_sum += latency_ms_sum;
    }
    for (minute, channel, bucket, sends) in latency {
        let Ok(channel) = channel.parse::<Channel>() else {
            continue;
        };
        let Some(r) = out.get_mut(&(minute, channel)) else {
            continue;
        };
        if let Some(slot) = usize::try_from(bucket)
            .ok()
            .filter(|b| *b < LATENCY_BUCKETS)
            .and_then(|b| r.latency.get_mut(b))
        {
            *slot += sends;
        }
    }
    out.into_values().collect()
}

pub(crate) fn failure_to_json(f: &LoggedFailure) -> Result<String> {
    serde_json::to_string(f).map_err(|e| corrupt("delivery failure", e))
}

pub(crate) fn failure_from_json(spec: &str) -> Result<LoggedFailure> {
    serde_json::from_str(spec).map_err(|e| corrupt("delivery failure", e))
}

/// A stored count (never negative) as the counters' type.
pub(crate) fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
