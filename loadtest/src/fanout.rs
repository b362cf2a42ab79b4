//! Scenario `fanout`: seed 004's sweep. One campaign per audience size, each to the segment
//! `n < size` over the users made by `seed`; time from creation to completion (from the
//! campaign's own timestamps) and users per second, next to seed 004's target for that size.

use crate::report::{Report, Table};
use crate::stats::per_second;
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Options of `fanout`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct FanoutOpts {
    /// Audience sizes, comma separated (each at most the number of seeded users).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,100,10000,100000,1000000"
    )]
    pub sizes: Vec<u64>,
    /// Channels of the campaigns, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "in_app")]
    pub channels: Vec<String>,
    /// Give up on a campaign after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// Seed 004's completion targets per audience size, in seconds.
pub fn seed_004_target(size: u64) -> f64 {
    match size {
        0..=1 => 1.0,
        2..=100 => 2.0,
        101..=10_000 => 10.0,
        10_001..=100_000 => 60.0,
        100_001..=1_000_000 => 300.0,
        _ => 1800.0,
    }
}

/// One campaign per size in `o.sizes`, one after the other.
pub async fn fanout(url: &str, key: &str, o: &FanoutOpts) -> anyhow::Result<Report> {
    let mut report = Report::new("fanout", url, o);
    let started = Instant::now();
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client
            .request(method, format!("{url}{path}"))
            .bearer_auth(key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move {
            let resp = req.send().await.context("request")?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("{status}: {value}");
            }
            Ok::<Value, anyhow::Error>(value)
        }
    };
    let mut table = Table::new(
        format!("Fan-out sweep ({})", o.channels.join(", ")),
        &[
            "audience",
            "strategy",
            "completed in",
            "users/s",
            "seed 004 target",
            "notifications written",
        ],
    );
    let mut sizes = Vec::new();
    for &size in &o.sizes {
        let segment = format!("loadtest-n-lt-{size}");
        call(
            reqwest::Method::PUT,
            &format!("/v1/segments/{segment}"),
            Some(json!({"filter": {"attr": "n", "lt": size}})),
        )
        .await?;
        let created = call(
            reqwest::Method::POST,
            "/v1/campaigns",
            Some(json!({
                "audience": {"segment": segment},
                "content": {"title": "Load test {{ data.run }}", "body": "Hello {{ user.id }}"},
                "channels": o.channels,
                "data": {"run": size},
            })),
        )
        .await?;
        let id = created["id"].as_str().context("campaign id")?.to_owned();
        let polled = Instant::now();
        let campaign = loop {
            let c = call(reqwest::Method::GET, &format!("/v1/campaigns/{id}"), None).await?;
            match c["status"].as_str() {
                Some("completed" | "active") => break c,
                Some("failed" | "cancelled") => bail!("campaign {id} ended {}", c["status"]),
                _ if polled.elapsed() > Duration::from_secs(o.timeout_secs) => {
                    bail!(
                        "campaign {id} did not complete in {} s: {c}",
                        o.timeout_secs
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        // The server's own timestamps, not the polling interval, give the duration.
        let secs = server_secs(&campaign).unwrap_or_else(|| polled.elapsed().as_secs_f64());
        let audience = campaign["audience_size"].as_u64().unwrap_or(size);
        let target = seed_004_target(audience);
        let strategy = campaign["strategy"].as_str().unwrap_or("?").to_owned();
        let written = campaign["progress"]["notifications_written"].clone();
        eprintln!("  audience {audience}: {strategy}, {secs:.3} s (target {target:.0} s)");
        table.row(vec![
            audience.to_string(),
            strategy.clone(),
            format!("{secs:.3} s"),
            format!("{:.0}", per_second(audience, secs)),
            format!("{target:.0} s"),
            written.to_string(),
        ]);
        sizes.push(json!({
            "size": size,
            "audience": audience,
            "campaign_id": id,
            "strategy": strategy,
            "secs": secs,
            "users_per_s": per_second(audience, secs),
            "target_secs": target,
            "within_target": secs <= target,
            "notifications_written": written,
        }));
    }
    report.figures = json!({ "sizes": sizes });
    report.tables.push(table);
    report.note(
        "\"Completed in\" runs from the campaign's `created_at` (before sizing) to its \
         `completed_at`: every row written and every channel message queued.",
    );
    Ok(report.finish(started))
}

/// Creation to completion, from the campaign's own timestamps.
fn server_secs(c: &Value) -> Option<f64> {
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    let (from, to) = (parse(&c["created_at"])?, parse(&c["completed_at"])?);
    Some((to - from).num_microseconds()? as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_004_targets_grow_with_the_audience() {
        assert_eq!(seed_004_target(1), 1.0);
        assert_eq!(seed_004_target(100), 2.0);
        assert_eq!(seed_004_target(10_000), 10.0);
        assert_eq!(seed_004_target(100_000), 60.0);
        assert_eq!(seed_004_target(1_000_000), 300.0);
        assert_eq!(seed_004_target(50_000_000), 1800.0);
    }

    #[test]
    fn the_duration_comes_from_the_campaigns_timestamps() {
        let c = json!({
            "created_at": "2026-11-22T10:00:00.250Z",
            "completed_at": "2026-11-22T10:00:01.500Z",
        });
        assert_eq!(server_secs(&c), Some(1.25));
        assert_eq!(
            server_secs(&json!({"created_at": "2026-11-22T10:00:00Z"})),
            None
        );
    }
}
