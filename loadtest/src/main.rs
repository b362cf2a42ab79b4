//! `herald-loadtest`: drives a running Herald through its public HTTP API only, and reports
//! what it measured. It targets loopback or explicitly given hosts, with bounded request counts.
//!
//! Scenarios so far: `seed` (bulk-import synthetic users), `fanout` (seed 004's sweep of
//! campaign sizes), `inbox` (open-loop inbox reads), `broadcast` (visibility of a broadcast in
//! sampled inboxes) and `live` (N WebSockets, server RSS per socket, broadcast latency to all
//! of them; in `live.rs`). The push scenario arrives with the push gateway.

mod live;

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
    /// Open-loop inbox reads (`GET /v1/inbox`) at a fixed rate over many users' tokens.
    /// Latency runs from each request's scheduled start, so a slow server cannot hide behind
    /// fewer requests (no coordinated omission).
    Inbox {
        /// Requests per second.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// How many distinct users (ids `<prefix>-00000000` …, as made by `seed`) to read as.
        #[arg(long, default_value_t = 1000)]
        users: u64,
        #[arg(long, default_value = "user")]
        prefix: String,
        /// Users to spread the reads over: their ids are `prefix-i` for i below this.
        #[arg(long, default_value_t = 1_000_000)]
        population: u64,
        /// Page size of each read.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Most requests in flight; a request that finds no slot counts as an error.
        #[arg(long, default_value_t = 512)]
        max_in_flight: usize,
    },
    /// A broadcast to `all`: time from the create request until it shows in every sampled
    /// inbox, and the personal rows it wrote.
    Broadcast {
        /// Inboxes to watch.
        #[arg(long, default_value_t = 20)]
        sample: u64,
        #[arg(long, default_value = "user")]
        prefix: String,
        /// Sampled user ids are spread over `prefix-i` for i below this.
        #[arg(long, default_value_t = 1_000_000)]
        population: u64,
    },
    /// N WebSockets on `GET /v1/inbox/live`: time to open them, the server's RSS per socket
    /// (with --server-pid), then broadcasts to `all` and their latency to every socket.
    Live {
        /// Sockets to open, one per user.
        #[arg(long, default_value_t = 1000)]
        connections: u64,
        #[arg(long, default_value = "user")]
        prefix: String,
        /// Users are spread over `prefix-i` for i below this (default: --connections, i.e.
        /// the first N seeded users).
        #[arg(long)]
        population: Option<u64>,
        /// Client source addresses 127.0.0.2, 127.0.0.3, … to cycle through (each gives about
        /// 28K ephemeral ports); 0 lets the kernel pick.
        #[arg(long, default_value_t = 8)]
        source_addrs: u8,
        /// Broadcasts to send, one after the other.
        #[arg(long, default_value_t = 3)]
        broadcasts: u32,
        /// The server's process id, to read its VmRSS before and after the sockets open.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Sockets being opened at once.
        #[arg(long, default_value_t = 256)]
        open_concurrency: usize,
        /// Token requests in flight.
        #[arg(long, default_value_t = 64)]
        mint_concurrency: usize,
        /// Most seconds to wait for a broadcast to reach every socket.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
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
        Scenario::Inbox {
            rate,
            duration_secs,
            users,
            prefix,
            population,
            limit,
            max_in_flight,
        } => {
            let ids = spread_ids(&prefix, users, population);
            inbox_load(
                &cli.url,
                &key,
                &ids,
                rate,
                duration_secs,
                limit,
                max_in_flight,
            )
            .await
        }
        Scenario::Broadcast {
            sample,
            prefix,
            population,
        } => broadcast_visibility(&cli.url, &key, &spread_ids(&prefix, sample, population)).await,
        Scenario::Live {
            connections,
            prefix,
            population,
            source_addrs,
            broadcasts,
            server_pid,
            open_concurrency,
            mint_concurrency,
            wait_secs,
        } => {
            let opts = live::LiveOpts {
                connections,
                prefix,
                population,
                source_addrs,
                broadcasts,
                server_pid,
                open_concurrency,
                mint_concurrency,
                wait_secs,
            };
            live::run(&cli.url, &key, opts).await
        }
    }
}

/// `n` user ids spread evenly over the first `population` seeded users.
fn spread_ids(prefix: &str, n: u64, population: u64) -> Vec<String> {
    let n = n.clamp(1, population.max(1));
    let step = (population / n).max(1);
    (0..n)
        .map(|i| format!("{prefix}-{:08}", i * step))
        .collect()
}

/// Inbox tokens for `ids`, minted through the admin API.
async fn tokens(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    ids: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let resp = client
            .post(format!("{url}/v1/users/{id}/token"))
            .bearer_auth(key)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("minting a token for {id}: {status} {body}");
        }
        out.push(body["token"].as_str().context("token")?.to_owned());
    }
    Ok(out)
}

async fn inbox_load(
    url: &str,
    key: &str,
    ids: &[String],
    rate: u32,
    duration_secs: u64,
    limit: u32,
    max_in_flight: usize,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_in_flight)
        .build()?;
    eprintln!("minting {} tokens…", ids.len());
    let tokens = std::sync::Arc::new(tokens(&client, url, key, ids).await?);
    let total = u64::from(rate) * duration_secs;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, ()>>();
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    let collector = tokio::spawn(async move {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("histogram bounds");
        let mut errors = 0u64;
        while let Some(r) = rx.recv().await {
            match r {
                Ok(us) => {
                    let _ = hist.record(us.max(1));
                }
                Err(()) => errors += 1,
            }
        }
        (hist, errors)
    });
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = tx.send(Err(()));
            continue;
        };
        let token = tokens[(i as usize) % tokens.len()].clone();
        let req = client
            .get(format!("{url}/v1/inbox?limit={limit}"))
            .bearer_auth(token);
        let tx = tx.clone();
        tokio::spawn(async move {
            let outcome = match req.send().await {
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(_) => Ok(scheduled.elapsed().as_micros() as u64),
                    Err(_) => Err(()),
                },
                _ => Err(()),
            };
            let _ = tx.send(outcome);
            drop(permit);
        });
        sent += 1;
    }
    drop(tx);
    let (hist, errors) = collector.await?;
    let secs = start.elapsed().as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "inbox: {} requests scheduled at {rate}/s over {duration_secs} s ({} users, limit {limit}): \
         {:.0} req/s done, errors {errors} ({:.2}%)",
        sent,
        ids.len(),
        hist.len() as f64 / secs,
        errors as f64 * 100.0 / total.max(1) as f64
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0
    );
    Ok(())
}

async fn broadcast_visibility(url: &str, key: &str, ids: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let tokens = tokens(&client, url, key, ids).await?;
    let title = format!("Broadcast {}", rand::random::<u32>());
    let started = Instant::now();
    let resp = client
        .post(format!("{url}/v1/campaigns"))
        .bearer_auth(key)
        .json(&json!({
            "audience": {"all": true},
            "content": {"title": title, "body": "Visible to everyone"},
            "channels": ["in_app"],
        }))
        .send()
        .await?;
    let created: Value = resp.json().await?;
    let accepted = started.elapsed();
    let id = created["id"].as_str().context("campaign id")?.to_owned();
    let mut pending: Vec<usize> = (0..tokens.len()).collect();
    let mut seen_at = vec![Duration::ZERO; tokens.len()];
    while !pending.is_empty() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} sampled inboxes never showed the broadcast",
                pending.len()
            );
        }
        let mut still = Vec::new();
        for &i in &pending {
            let inbox: Value = client
                .get(format!("{url}/v1/inbox?limit=5"))
                .bearer_auth(&tokens[i])
                .send()
                .await?
                .json()
                .await?;
            let found = inbox["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|it| it["title"] == title.as_str()));
            if found {
                seen_at[i] = started.elapsed();
            } else {
                still.push(i);
            }
        }
        pending = still;
    }
    let campaign: Value = client
        .get(format!("{url}/v1/campaigns/{id}"))
        .bearer_auth(key)
        .send()
        .await?
        .json()
        .await?;
    let last = seen_at.iter().max().copied().unwrap_or_default();
    println!(
        "broadcast to all ({} users): accepted in {:.1} ms (sizing included), visible in all {} \
         sampled inboxes {:.1} ms after the request; personal rows written: {}; strategy {}",
        campaign["audience_size"],
        accepted.as_secs_f64() * 1000.0,
        tokens.len(),
        last.as_secs_f64() * 1000.0,
        campaign["progress"]["notifications_written"],
        campaign["strategy"],
    );
    Ok(())
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
