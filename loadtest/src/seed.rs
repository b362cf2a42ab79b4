//! Scenario `seed`: bulk-imports N synthetic users (tiers, locales, time zones, last activity,
//! a score and a sequence number `n`) through `POST /v1/users/import`, and reports users per
//! second. The other scenarios read these users back by id (`<prefix>-<n:08>`) and select
//! audiences with segments over `n`.

use crate::report::{Report, Table};
use crate::stats::per_second;
use anyhow::{bail, Context as _};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Instant;

/// Options of `seed`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct SeedOpts {
    /// How many users.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Users per import request (each request is one streamed NDJSON body).
    #[arg(long, default_value_t = 1_000_000)]
    pub per_request: u64,
    /// Id prefix, so several seeds can coexist.
    #[arg(long, default_value = "user")]
    pub prefix: String,
    /// Random seed of the synthetic attributes.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const TIERS: [&str; 10] = [
    "free", "free", "free", "free", "free", "free", "plus", "plus", "plus", "premium",
];
const LOCALES: [&str; 7] = ["en", "fr", "de", "es", "pt", "ja", "it"];
const ZONES: [&str; 7] = [
    "Europe/Paris",
    "America/New_York",
    "Asia/Tokyo",
    "Europe/London",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "UTC",
];

/// One synthetic user as an NDJSON line.
fn user_line(rng: &mut StdRng, prefix: &str, i: u64) -> String {
    format!(
        "{{\"id\":\"{prefix}-{i:08}\",\"email\":\"{prefix}{i}@example.com\",\"attributes\":{{\"tier\":\"{}\",\"locale\":\"{}\",\"timezone\":\"{}\",\"last_active_at\":\"2026-{:02}-{:02}T{:02}:00:00Z\",\"score\":{},\"n\":{i}}}}}\n",
        TIERS[rng.random_range(0..TIERS.len())],
        LOCALES[rng.random_range(0..LOCALES.len())],
        ZONES[rng.random_range(0..ZONES.len())],
        rng.random_range(1..=11),
        rng.random_range(1..=28),
        rng.random_range(0..24),
        rng.random_range(0..1000),
    )
}

/// Imports `o.users` users, `o.per_request` per request.
pub async fn seed(url: &str, key: &str, o: &SeedOpts) -> anyhow::Result<Report> {
    let mut report = Report::new("seed", url, o);
    let per_request = o.per_request.max(1);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(o.seed);
    let mut done = 0u64;
    let mut request_secs = 0.0;
    let mut requests = Vec::new();
    while done < o.users {
        let n = per_request.min(o.users - done);
        // Generate the body up front so the measurement is the server's, not the generator's.
        let mut body = String::with_capacity(n as usize * 180);
        for i in done..done + n {
            body.push_str(&user_line(&mut rng, &o.prefix, i));
        }
        let bytes = Bytes::from(body);
        let req_started = Instant::now();
        let resp = client
            .post(format!("{url}/v1/users/import"))
            .bearer_auth(key)
            .header("content-type", "application/x-ndjson")
            .body(bytes)
            .send()
            .await
            .context("import request")?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("import failed with {status}: {text}");
        }
        let secs = req_started.elapsed().as_secs_f64();
        request_secs += secs;
        done += n;
        requests.push(json!({"users": n, "secs": secs, "users_per_s": per_second(n, secs)}));
        eprintln!(
            "  {done:>10} / {} users  ({:.0} users/s for this request of {n})",
            o.users,
            per_second(n, secs)
        );
    }
    let secs = started.elapsed().as_secs_f64();
    report.figures = json!({
        "users": o.users,
        "imported": done,
        "requests": requests,
        "secs": secs,
        "users_per_s": per_second(done, secs),
        "request_secs": request_secs,
        "request_users_per_s": per_second(done, request_secs),
    });
    let mut table = Table::new(
        "Bulk import (`POST /v1/users/import`)",
        &[
            "users",
            "requests",
            "import requests",
            "users/s (requests)",
            "total, generating the bodies included",
            "users/s (total)",
        ],
    );
    table.row(vec![
        done.to_string(),
        requests.len().to_string(),
        format!("{request_secs:.2} s"),
        format!("{:.0}", per_second(done, request_secs)),
        format!("{secs:.2} s"),
        format!("{:.0}", per_second(done, secs)),
    ]);
    report.tables.push(table);
    report.note(
        "Request time is the server-side import including the request transfer; each body is \
         generated before its request is timed.",
    );
    Ok(report.finish(started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_user_is_one_json_line_with_its_sequence_number() {
        let mut rng = StdRng::seed_from_u64(7);
        let line = user_line(&mut rng, "user", 42);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("JSON line");
        assert_eq!(v["id"], "user-00000042");
        assert_eq!(v["attributes"]["n"], 42);
        assert!(TIERS.contains(&v["attributes"]["tier"].as_str().expect("tier")));
    }
}
