//! `herald-loadtest`: drives a running Herald through its public HTTP API only, and reports
//! what it measured. It targets loopback or explicitly given hosts, with bounded request counts.
//!
//! Scenarios so far: `seed` (bulk-import synthetic users) and `fanout` (seed 004's sweep of
//! campaign sizes). The broadcast, inbox, live and push scenarios arrive with the load-test
//! issue.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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
    /// Seed 004's sweep: one campaign per audience size (segments `n < size` over users made
    /// by `seed`), time to completion and users/s next to seed 004's target for that size.
    Fanout {
        /// Audience sizes, comma separated (each at most the number of seeded users).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1,100,10000,100000,1000000"
        )]
        sizes: Vec<u64>,
        /// Channels of the campaigns, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "in_app")]
        channels: Vec<String>,
        /// Give up on a campaign after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
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
        Scenario::Fanout {
            sizes,
            channels,
            timeout_secs,
        } => fanout_sweep(&cli.url, &key, &sizes, &channels, timeout_secs).await,
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

/// Seed 004's completion targets per audience size, in seconds.
fn seed_004_target(size: u64) -> f64 {
    match size {
        0..=1 => 1.0,
        2..=100 => 2.0,
        101..=10_000 => 10.0,
        10_001..=100_000 => 60.0,
        100_001..=1_000_000 => 300.0,
        _ => 1800.0,
    }
}

async fn fanout_sweep(
    url: &str,
    key: &str,
    sizes: &[u64],
    channels: &[String],
    timeout_secs: u64,
) -> anyhow::Result<()> {
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
    println!("| audience | strategy | completed in | users/s | seed 004 target | notifications written |");
    println!("|---------:|----------|-------------:|--------:|----------------:|----------------------:|");
    for &size in sizes {
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
                "channels": channels,
                "data": {"run": size},
            })),
        )
        .await?;
        let id = created["id"].as_str().context("campaign id")?.to_owned();
        let started = Instant::now();
        let campaign = loop {
            let c = call(reqwest::Method::GET, &format!("/v1/campaigns/{id}"), None).await?;
            match c["status"].as_str() {
                Some("completed" | "active") => break c,
                Some("failed" | "cancelled") => bail!("campaign {id} ended {}", c["status"]),
                _ if started.elapsed() > Duration::from_secs(timeout_secs) => {
                    bail!("campaign {id} did not complete in {timeout_secs} s: {c}")
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        // The server's own timestamps, not the polling interval, give the duration.
        let secs = server_secs(&campaign).unwrap_or_else(|| started.elapsed().as_secs_f64());
        let audience = campaign["audience_size"].as_u64().unwrap_or(size);
        println!(
            "| {audience} | {} | {secs:.3} s | {:.0} | {:.0} s | {} |",
            campaign["strategy"].as_str().unwrap_or("?"),
            audience as f64 / secs.max(1e-6),
            seed_004_target(audience),
            campaign["progress"]["notifications_written"],
        );
    }
    Ok(())
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
