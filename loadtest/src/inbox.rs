//! Scenario `inbox`: open-loop inbox reads (`GET /v1/inbox`) at a fixed rate over many users'
//! tokens. Latency runs from each request's scheduled start, so a slow server cannot hide
//! behind fewer requests (no coordinated omission); a request that finds every in-flight slot
//! taken is refused by the generator and counts as an error.

use crate::report::{Report, Table};
use crate::stats::{self, per_second, percent, LatencySummary};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `inbox`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct InboxOpts {
    /// Requests per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// How many distinct users (ids `<prefix>-00000000` …, as made by `seed`) to read as.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    #[arg(long, default_value = "user")]
    pub prefix: String,
    /// Users to spread the reads over: their ids are `prefix-i` for i below this.
    #[arg(long, default_value_t = 1_000_000)]
    pub population: u64,
    /// Page size of each read.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Most requests in flight; a request that finds no slot counts as an error.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
}

/// How one scheduled request ended.
enum Outcome {
    /// Answered 2xx with its whole body, this long after its scheduled start.
    Done(Duration),
    /// No in-flight slot was free at its scheduled start.
    Refused,
    /// A transport error or a non-2xx status.
    Failed,
}

/// `o.rate × o.duration_secs` reads, spread over `o.users` users' tokens.
pub async fn inbox(url: &str, key: &str, o: &InboxOpts) -> anyhow::Result<Report> {
    let mut report = Report::new("inbox", url, o);
    let run_started = Instant::now();
    let ids = crate::spread_ids(&o.prefix, o.users, o.population);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.max_in_flight)
        .build()?;
    eprintln!("minting {} tokens…", ids.len());
    let tokens = Arc::new(crate::tokens(&client, url, key, &ids).await?);
    let total = u64::from(o.rate) * o.duration_secs;
    let interval = Duration::from_secs_f64(1.0 / f64::from(o.rate.max(1)));
    let slots = Arc::new(tokio::sync::Semaphore::new(o.max_in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    let collector = tokio::spawn(async move {
        let mut hist = stats::histogram();
        let (mut refused, mut failed) = (0u64, 0u64);
        while let Some(outcome) = rx.recv().await {
            match outcome {
                Outcome::Done(latency) => stats::record(&mut hist, latency),
                Outcome::Refused => refused += 1,
                Outcome::Failed => failed += 1,
            }
        }
        (hist, refused, failed)
    });
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = tx.send(Outcome::Refused);
            continue;
        };
        let token = tokens[(i as usize) % tokens.len()].clone();
        let req = client
            .get(format!("{url}/v1/inbox?limit={}", o.limit))
            .bearer_auth(token);
        let tx = tx.clone();
        tokio::spawn(async move {
            let outcome = match req.send().await {
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(_) => Outcome::Done(scheduled.elapsed()),
                    Err(_) => Outcome::Failed,
                },
                _ => Outcome::Failed,
            };
            let _ = tx.send(outcome);
            drop(permit);
        });
        sent += 1;
    }
    drop(tx);
    let (hist, refused, failed) = collector.await?;
    let secs = start.elapsed().as_secs_f64();
    let errors = refused + failed;
    let latency = LatencySummary::from_micros(&hist);
    let done_per_s = per_second(hist.len(), secs);
    report.figures = json!({
        "scheduled": total,
        "sent": sent,
        "completed": hist.len(),
        "errors": errors,
        "refused": refused,
        "failed": failed,
        "error_pct": percent(errors, total),
        "secs": secs,
        "done_per_s": done_per_s,
        "latency_ms": latency,
        "latency_spectrum": stats::spectrum(&hist),
    });
    let mut table = Table::new(
        "Inbox reads (`GET /v1/inbox`, open loop)",
        &[
            "rate (req/s)",
            "done (req/s)",
            "errors",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
        ],
    );
    table.row(vec![
        o.rate.to_string(),
        format!("{done_per_s:.0}"),
        format!("{errors} ({:.2}%)", percent(errors, total)),
        latency.show(latency.p50_ms),
        latency.show(latency.p90_ms),
        latency.show(latency.p99_ms),
        latency.show(latency.p999_ms),
        latency.show(latency.max_ms),
    ]);
    report.tables.push(table);
    report.note(format!(
        "{sent} requests sent of {total} scheduled at {}/s over {} s ({} users, limit {}); \
         {refused} refused by the generator's {} in-flight cap, {failed} failed.",
        o.rate,
        o.duration_secs,
        ids.len(),
        o.limit,
        o.max_in_flight,
    ));
    report.note(
        "Latency runs from each request's scheduled start to its last body byte (no \
         coordinated omission).",
    );
    Ok(report.finish(run_started))
}
