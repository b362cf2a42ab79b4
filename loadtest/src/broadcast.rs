//! Scenario `broadcast`: one campaign to `all`, then the time until it shows in every sampled
//! inbox, and the personal rows it wrote (none, when it is stored once as a broadcast).

use crate::report::{Report, Table};
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Give up when a sampled inbox has not shown the broadcast after this long.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `broadcast`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct BroadcastOpts {
    /// Inboxes to watch.
    #[arg(long, default_value_t = 20)]
    pub sample: u64,
    #[arg(long, default_value = "user")]
    pub prefix: String,
    /// Sampled user ids are spread over `prefix-i` for i below this.
    #[arg(long, default_value_t = 1_000_000)]
    pub population: u64,
}

/// Sends one broadcast and polls the sampled inboxes until each shows it.
pub async fn broadcast(url: &str, key: &str, o: &BroadcastOpts) -> anyhow::Result<Report> {
    let mut report = Report::new("broadcast", url, o);
    let run_started = Instant::now();
    let ids = crate::spread_ids(&o.prefix, o.sample, o.population);
    let client = reqwest::Client::new();
    let tokens = crate::tokens(&client, url, key, &ids).await?;
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
        .await
        .context("creating the broadcast")?;
    let status = resp.status();
    let created: Value = resp.json().await.unwrap_or(Value::Null);
    let accepted = started.elapsed();
    if !status.is_success() {
        bail!("creating the broadcast: {status} {created}");
    }
    let id = created["id"].as_str().context("campaign id")?.to_owned();
    let mut pending: Vec<usize> = (0..tokens.len()).collect();
    let mut seen_at = vec![Duration::ZERO; tokens.len()];
    while !pending.is_empty() {
        if started.elapsed() > VISIBLE_TIMEOUT {
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
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let after_202 = last.saturating_sub(accepted);
    report.figures = json!({
        "campaign_id": id,
        "audience_size": campaign["audience_size"],
        "strategy": campaign["strategy"],
        "accepted_ms": ms(accepted),
        "sample": tokens.len(),
        "visible": tokens.len(),
        "visible_ms": ms(last),
        "visible_after_202_ms": ms(after_202),
        "notifications_written": campaign["progress"]["notifications_written"],
    });
    let mut table = Table::new(
        "Broadcast to `all`",
        &[
            "audience",
            "strategy",
            "create request (202)",
            &format!("visible in all {} sampled inboxes", tokens.len()),
            "after the 202",
            "personal rows written",
        ],
    );
    table.row(vec![
        campaign["audience_size"].to_string(),
        campaign["strategy"].as_str().unwrap_or("?").to_owned(),
        format!("{:.1} ms", ms(accepted)),
        format!("{:.1} ms", ms(last)),
        format!("{:.1} ms", ms(after_202)),
        campaign["progress"]["notifications_written"].to_string(),
    ]);
    report.tables.push(table);
    report.note(
        "The create request's time includes sizing the audience; visibility runs from the \
         start of the create request to the read that first showed it in each sampled inbox.",
    );
    Ok(report.finish(run_started))
}
