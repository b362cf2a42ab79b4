//! Statistics of a run: latency summaries and percentile spectra from an hdrhistogram of
//! microseconds, and per-second rates from counts and durations.
//!
//! Latencies are recorded in whole microseconds and reported in milliseconds, the unit the
//! design targets are written in. An empty histogram summarises to zeros with `count == 0`
//! (JSON has no NaN), and the report shows those as "–".

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The largest latency a histogram of [`histogram`] holds: one hour, in µs.
pub const MAX_MICROS: u64 = 3_600_000_000;

/// A histogram of latencies in µs from 1 µs to an hour at 3 significant digits (0.1 %).
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

/// Records one latency; anything below 1 µs counts as 1 µs and anything past an hour as an
/// hour, so no sample is silently dropped.
pub fn record(hist: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
    hist.saturating_record(us.clamp(1, MAX_MICROS));
}

/// Count, mean and the usual percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_micros(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: hist.len(),
            mean_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            // `max` is the highest equivalent value of the top bucket, like the quantiles.
            max_ms: ms(hist.max()),
        }
    }

    /// `value` as "1.23 ms", or "–" when nothing was measured.
    pub fn show(&self, value: f64) -> String {
        if self.count == 0 {
            "–".into()
        } else {
            format_ms(value)
        }
    }
}

/// A duration in ms with a precision that suits its size: "0.412 ms", "3.25 ms", "153 ms".
pub fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 100.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// One point of a percentile spectrum: the latency (ms) at or below which `percentile` % of
/// the samples fall.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    pub percentile: f64,
    pub ms: f64,
}

/// HdrHistogram's classic percentile spectrum: points ever closer together towards the tail
/// (5 per halving of the distance to 100 %), ending at the maximum (100 %).
pub fn spectrum(hist: &Histogram<u64>) -> Vec<SpectrumPoint> {
    let mut out: Vec<SpectrumPoint> = Vec::new();
    if hist.is_empty() {
        return out;
    }
    for v in hist.iter_quantiles(5) {
        let point = SpectrumPoint {
            // Rounded: the iterator's sums of halvings carry float noise (30.000000000000004).
            percentile: (v.quantile_iterated_to() * 100.0 * 1e6).round() / 1e6,
            ms: hist.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
        };
        // The iterator repeats the last value at 100 %; keep one point per percentile.
        if out.last().is_some_and(|p| p.percentile >= point.percentile) {
            continue;
        }
        out.push(point);
    }
    out
}

/// Events per second; a zero or negative duration counts as 1 µs, so the rate stays finite.
pub fn per_second(count: u64, secs: f64) -> f64 {
    count as f64 / secs.max(1e-6)
}

/// Events per second over a [`Duration`].
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    per_second(count, elapsed.as_secs_f64())
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_1_to_1000_us() -> Histogram<u64> {
        let mut h = histogram();
        for us in 1..=1000 {
            record(&mut h, Duration::from_micros(us));
        }
        h
    }

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn a_uniform_spread_of_1_to_1000_microseconds_has_its_median_near_500() {
        let s = LatencySummary::from_micros(&uniform_1_to_1000_us());
        assert_eq!(s.count, 1000);
        // Three significant digits: each value is within 0.1 % of the true one.
        assert!(close(s.p50_ms, 0.500, 0.001), "{s:?}");
        assert!(close(s.p90_ms, 0.900, 0.001), "{s:?}");
        assert!(close(s.p99_ms, 0.990, 0.001), "{s:?}");
        assert!(close(s.p999_ms, 0.999, 0.001), "{s:?}");
        assert!(close(s.max_ms, 1.000, 0.001), "{s:?}");
        assert!(close(s.mean_ms, 0.5005, 0.001), "{s:?}");
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros_and_shows_dashes() {
        let s = LatencySummary::from_micros(&histogram());
        assert_eq!(s, LatencySummary::default());
        assert_eq!(s.show(s.p99_ms), "–");
        assert!(spectrum(&histogram()).is_empty());
    }

    #[test]
    fn a_single_value_is_every_percentile() {
        let mut h = histogram();
        record(&mut h, Duration::from_millis(7));
        let s = LatencySummary::from_micros(&h);
        assert_eq!(s.count, 1);
        for v in [s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms] {
            assert!(close(v, 7.0, 0.007), "{s:?}");
        }
        assert_eq!(s.show(s.p50_ms), "7.00 ms");
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_are_clamped_not_dropped() {
        let mut h = histogram();
        record(&mut h, Duration::from_nanos(10));
        record(&mut h, Duration::from_secs(10 * 3600));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_MICROS);
    }

    #[test]
    fn the_spectrum_rises_to_the_maximum_at_100_percent() {
        let h = uniform_1_to_1000_us();
        let points = spectrum(&h);
        assert!(points.len() > 10, "{}", points.len());
        assert!(points
            .windows(2)
            .all(|w| w[0].percentile < w[1].percentile && w[0].ms <= w[1].ms));
        let last = points.last().expect("points");
        assert_eq!(last.percentile, 100.0);
        assert!(close(last.ms, 1.0, 0.001), "{last:?}");
        assert!(points
            .iter()
            .any(|p| p.percentile >= 99.0 && p.percentile < 100.0));
    }

    #[test]
    fn rates_divide_counts_by_seconds_and_survive_a_zero_duration() {
        assert_eq!(per_second(500, 2.0), 250.0);
        assert_eq!(rate(300, Duration::from_millis(1500)), 200.0);
        assert!(per_second(1, 0.0).is_finite());
        assert_eq!(per_second(0, 0.0), 0.0);
        assert_eq!(percent(1, 4), 25.0);
        assert_eq!(percent(3, 0), 0.0);
    }

    #[test]
    fn milliseconds_are_shown_with_a_precision_that_suits_their_size() {
        assert_eq!(format_ms(0.4123), "0.412 ms");
        assert_eq!(format_ms(3.254), "3.25 ms");
        assert_eq!(format_ms(152.6), "153 ms");
    }
}
