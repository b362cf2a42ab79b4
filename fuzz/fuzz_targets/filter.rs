//! The filter DSL: any JSON either parses into a filter or is refused; a filter compiles to
//! SQL for both dialects with exactly one bound value per placeholder (no user text in the SQL
//! itself), and evaluates in memory, without panicking.
#![no_main]

use herald_core::filter::{Filter, SqlDialect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(filter) = Filter::parse(&value) else {
        return;
    };
    let now = chrono::Utc::now();
    for dialect in [SqlDialect::Sqlite, SqlDialect::Mysql] {
        let sql = filter.to_sql(dialect, "attributes", now);
        assert_eq!(
            sql.sql.matches('?').count(),
            sql.params.len(),
            "placeholders and values disagree: {}",
            sql.sql
        );
    }
    let attrs =
        serde_json::json!({"tier": "premium", "n": 3, "ok": true, "at": "2026-01-01T00:00:00Z"});
    let _ = filter.matches(attrs.as_object().unwrap(), now);
});
