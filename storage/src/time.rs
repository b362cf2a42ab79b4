//! Stored times are integer microseconds since the Unix epoch, UTC: compact, sortable and the
//! same in every engine.

use chrono::{DateTime, Utc};

#[allow(dead_code)]
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

#[allow(dead_code)]
pub(crate) fn from_micros(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(v).unwrap_or_default()
}

#[allow(dead_code)]
pub(crate) fn opt_from_micros(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.map(from_micros)
}
