//! Scenario `push`: device sends per second through the push gateway, against a fake FCM that
//! this harness runs itself (`herald_push::fakes`, HTTP/1.1 and h2c on one port).
//!
//! The server under test must point FCM at the fake before it starts, so the run has two steps:
//! `herald-loadtest push --write-credentials fcm.json` writes the fake's service-account file
//! (its `token_uri` is the fake), then `herald serve` starts with
//! `HERALD_PUSH__FCM__ENDPOINT=http://<fcm-listen> HERALD_PUSH__FCM__CREDENTIALS_FILE=fcm.json`,
//! and `herald-loadtest push --devices N` starts the fake, registers one FCM device for each of
//! the first N seeded users, sends one campaign to them, and times the sends as the fake
//! receives them. [`push_with_fcm`] runs the second step against a fake that is already
//! running (a test starts it on port 0 before the server).

use crate::report::{Report, Table};
use crate::stats::per_second;
use anyhow::{bail, Context};
use futures::StreamExt;
use herald_push::fakes::FakeFcm;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Options of `push`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct PushOpts {
    /// Devices (= users) to send to.
    #[arg(long, default_value_t = 100_000)]
    pub devices: u64,
    #[arg(long, default_value = "user")]
    pub prefix: String,
    /// Where the fake FCM listens (the server's `push.fcm.endpoint`).
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub fcm_listen: String,
    /// Device registrations in flight (with `--register requests`).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How the devices are registered: `import` (one `POST /v1/devices/import` NDJSON body)
    /// or `requests` (one `POST /v1/users/{id}/devices` each).
    #[arg(long, value_enum, default_value_t = Register::Import)]
    #[serde(default)]
    pub register: Register,
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// How `push` registers its devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Register {
    #[default]
    Import,
    Requests,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushFigures {
    pub devices: u64,
    pub register_secs: f64,
    #[serde(default)]
    pub registered_per_s: f64,
    /// From the campaign request to the last send at the fake.
    pub campaign_to_last_send_secs: f64,
    /// From the first send to the last one at the fake.
    pub send_window_secs: f64,
    pub sends_per_s: f64,
    /// The campaign's push delivery counters once they caught up.
    pub sent: u64,
    pub failed: u64,
    /// Sends the fake answered 200 and with an error during the run.
    pub fake_accepted: u64,
    pub fake_rejected: u64,
}

/// Writes the service-account file of a fake FCM listening on `fcm_listen`, and returns how
/// to start the server against it.
pub fn write_fcm_credentials(fcm_listen: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let endpoint = format!("http://{fcm_listen}");
    std::fs::write(path, herald_push::fakes::credentials(&endpoint).to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "wrote {}; start the server with\n  HERALD_PUSH__FCM__ENDPOINT={endpoint} \
         HERALD_PUSH__FCM__CREDENTIALS_FILE={} HERALD_PUSH__FCM__H2C=true herald serve",
        path.display(),
        path.display()
    ))
}

/// Starts the fake FCM on `o.fcm_listen` (without per-token bookkeeping) and runs
/// [`push_with_fcm`] against it.
pub async fn push(url: &str, key: &str, o: &PushOpts) -> anyhow::Result<Report> {
    let fcm = FakeFcm::start_on(&o.fcm_listen, false)
        .await
        .with_context(|| format!("starting the fake FCM on {}", o.fcm_listen))?;
    push_with_fcm(url, key, o, &fcm).await
}

/// Registers `o.devices` FCM devices, sends them one push campaign and times the sends at
/// `fcm`, the fake the server under test sends to (`o.fcm_listen` is then only reported).
pub async fn push_with_fcm(
    url: &str,
    key: &str,
    o: &PushOpts,
    fcm: &FakeFcm,
) -> anyhow::Result<Report> {
    let mut report = Report::new("push", url, o);
    // The fake may listen elsewhere than `o.fcm_listen` (a test's port 0): report where it does.
    let endpoint = fcm.endpoint();
    report.params["fcm_listen"] = endpoint.trim_start_matches("http://").into();
    let run_started = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .build()?;
    let run_id = rand::random::<u32>();

    // One FCM device per user, registered through the admin API.
    eprintln!("registering {} devices ({:?})…", o.devices, o.register);
    let mut started = Instant::now();
    match o.register {
        Register::Import => {
            // Generated up front, so the measurement is the server's, not the generator's.
            let mut body = String::with_capacity(o.devices as usize * 80);
            for i in 0..o.devices {
                body.push_str(&format!(
                    "{{\"user_id\":\"{}-{i:08}\",\"platform\":\"fcm\",\"token\":\"lt{run_id}-{i}\"}}\n",
                    o.prefix
                ));
            }
            started = Instant::now();
            let resp = client
                .post(format!("{url}/v1/devices/import"))
                .bearer_auth(key)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let answer: serde_json::Value = resp.json().await?;
            if !status.is_success() || answer["imported"].as_u64() != Some(o.devices) {
                bail!("importing {} devices: {status} {answer}", o.devices);
            }
            eprintln!(
                "  {} devices in {:.1} s",
                o.devices,
                started.elapsed().as_secs_f64()
            );
        }
        Register::Requests => {
            let mut results = futures::stream::iter(0..o.devices)
                .map(|i| {
                    let req = client
                        .post(format!("{url}/v1/users/{}-{i:08}/devices", o.prefix))
                        .bearer_auth(key)
                        .json(&json!({"platform": "fcm", "token": format!("lt{run_id}-{i}")}));
                    async move {
                        let resp = req.send().await?;
                        let status = resp.status();
                        if !status.is_success() {
                            bail!("registering device {i}: {status} {}", resp.text().await?);
                        }
                        Ok::<(), anyhow::Error>(())
                    }
                })
                .buffer_unordered(o.concurrency.max(1));
            let mut done = 0u64;
            while let Some(r) = results.next().await {
                r?;
                done += 1;
                if done % 20_000 == 0 {
                    eprintln!("  {done} / {}", o.devices);
                }
            }
        }
    }
    let register_secs = started.elapsed().as_secs_f64();

    let segment = format!("loadtest-push-n-lt-{}", o.devices);
    let put = client
        .put(format!("{url}/v1/segments/{segment}"))
        .bearer_auth(key)
        .json(&json!({"filter": {"attr": "n", "lt": o.devices}}))
        .send()
        .await?;
    if !put.status().is_success() {
        bail!("segment: {} {}", put.status(), put.text().await?);
    }
    let (accepted_before, rejected_before) = (fcm.sent(), fcm.rejected());
    let before = accepted_before + rejected_before;
    let campaign_started = Instant::now();
    let resp = client
        .post(format!("{url}/v1/campaigns"))
        .bearer_auth(key)
        .json(&json!({
            "audience": {"segment": segment},
            "content": {"title": "Load test {{ data.run }}", "body": "Hello {{ user.id }}"},
            "channels": ["push"],
            "priority": "high",
            "data": {"run": run_id},
        }))
        .send()
        .await?;
    let status = resp.status();
    let created: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("campaign: {status} {created}");
    }
    let id = created["id"].as_str().context("campaign id")?.to_owned();

    // Watch the fake's counter: the first and the last send as it saw them.
    let mut first: Option<Instant> = None;
    let deadline = campaign_started + Duration::from_secs(o.timeout_secs);
    let last = loop {
        let seen = fcm.sent() + fcm.rejected() - before;
        if seen > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if seen >= o.devices {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "only {seen} of {} sends arrived in {} s",
                o.devices,
                o.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let first = first.unwrap_or(last);
    // The campaign's counters catch up with the delivery reports.
    let mut campaign = Value::Null;
    for _ in 0..200 {
        campaign = client
            .get(format!("{url}/v1/campaigns/{id}"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        let push = &campaign["deliveries"]["push"];
        let counted = push["sent"].as_u64().unwrap_or(0) + push["failed"].as_u64().unwrap_or(0);
        if counted >= o.devices {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = (last - first).as_secs_f64().max(1e-3);
    let deliveries = &campaign["deliveries"]["push"];
    let figures = PushFigures {
        devices: o.devices,
        register_secs,
        registered_per_s: per_second(o.devices, register_secs),
        campaign_to_last_send_secs: (last - campaign_started).as_secs_f64(),
        send_window_secs: window,
        sends_per_s: per_second(o.devices, window),
        sent: deliveries["sent"].as_u64().unwrap_or(0),
        failed: deliveries["failed"].as_u64().unwrap_or(0),
        fake_accepted: fcm.sent().saturating_sub(accepted_before),
        fake_rejected: fcm.rejected().saturating_sub(rejected_before),
    };
    let mut table = Table::new(
        "Push sends through the gateway to the fake FCM",
        &[
            "devices",
            "registered in",
            "registered/s",
            "campaign → last send",
            "first → last send",
            "sends/s",
            "sent",
            "failed",
        ],
    );
    table.row(vec![
        figures.devices.to_string(),
        format!("{:.1} s", figures.register_secs),
        format!("{:.0}", figures.registered_per_s),
        format!("{:.2} s", figures.campaign_to_last_send_secs),
        format!("{:.2} s", figures.send_window_secs),
        format!("{:.0}", figures.sends_per_s),
        figures.sent.to_string(),
        figures.failed.to_string(),
    ]);
    report.tables.push(table);
    report.note(format!(
        "campaign {id}; the fake answered {} sends 200 and {} with an error; \
         sends/s run from the first to the last send the fake saw.",
        figures.fake_accepted, figures.fake_rejected
    ));
    report.figures = serde_json::to_value(&figures).context("push figures")?;
    Ok(report.finish(run_started))
}
