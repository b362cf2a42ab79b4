//! `herald-loadtest`: drives a running Herald through its public HTTP API only, and reports
//! what it measured. It targets loopback or explicitly given hosts, with bounded request counts.
//!
//! Scenarios so far: `seed` (bulk-import synthetic users). The fan-out, broadcast, inbox, live
//! and push scenarios arrive with the load-test issue.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "herald-loadtest",
    version,
    about = "Load scenarios against a running Herald"
)]
struct Cli {
    /// Base URL of the Herald under test.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin key (defaults to the contents of ./herald-data/admin.key).
    #[arg(long, global = true, env = "HERALD_ADMIN_KEY")]
    admin_key: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Bulk-import N synthetic users (tiers, locales, time zones, activity) through
    /// `POST /v1/users/import`, and report users per second.
    Seed {
        /// How many users.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Users per import request (each request is one streamed NDJSON body).
        #[arg(long, default_value_t = 1_000_000)]
        per_request: u64,
        /// Id prefix, so several seeds can coexist.
        #[arg(long, default_value = "user")]
        prefix: String,
        /// Random seed of the synthetic attributes.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    check_target(&cli.url)?;
    let key = match cli.admin_key.clone() {
        Some(k) => k,
        None => std::fs::read_to_string("herald-data/admin.key")
            .context("no --admin-key and no ./herald-data/admin.key")?
            .trim()
            .to_owned(),
    };
    match cli.scenario {
        Scenario::Seed {
            users,
            per_request,
            prefix,
            seed,
        } => seed_users(&cli.url, &key, users, per_request.max(1), &prefix, seed).await,
    }
}

/// Load goes to loopback or to a host the operator names explicitly; never anywhere by default.
fn check_target(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or("");
    let loopback = host == "localhost" || host.starts_with("127.") || host == "[";
    if !loopback && std::env::var("HERALD_LOADTEST_ALLOW_HOST").as_deref() != Ok(host) {
        bail!("refusing to load {host}: only loopback targets, or set HERALD_LOADTEST_ALLOW_HOST={host}");
    }
    Ok(())
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
        "{{\"id\":\"{prefix}-{i:08}\",\"email\":\"{prefix}{i}@example.com\",\"attributes\":{{\"tier\":\"{}\",\"locale\":\"{}\",\"timezone\":\"{}\",\"last_active_at\":\"2026-{:02}-{:02}T{:02}:00:00Z\",\"score\":{}}}}}\n",
        TIERS[rng.random_range(0..TIERS.len())],
        LOCALES[rng.random_range(0..LOCALES.len())],
        ZONES[rng.random_range(0..ZONES.len())],
        rng.random_range(1..=11),
        rng.random_range(1..=28),
        rng.random_range(0..24),
        rng.random_range(0..1000),
    )
}

async fn seed_users(
    url: &str,
    key: &str,
    users: u64,
    per_request: u64,
    prefix: &str,
    seed: u64,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done = 0u64;
    while done < users {
        let n = per_request.min(users - done);
        // Generate the body up front so the measurement is the server's, not the generator's.
        let mut body = String::with_capacity(n as usize * 180);
        for i in done..done + n {
            body.push_str(&user_line(&mut rng, prefix, i));
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
        done += n;
        eprintln!(
            "  {done:>10} / {users} users  ({:.0} users/s for this request of {n})",
            n as f64 / secs
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seed: {users} users in {secs:.2} s = {:.0} users/s (server-side import, including request transfer)",
        users as f64 / secs
    );
    Ok(())
}
