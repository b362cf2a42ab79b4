//! Operator commands that talk to a running Herald over its admin API, with progress bars:
//! `herald users import`, `herald devices import` and `herald campaigns watch`. They open no
//! backend and hold no logic of their own: the server does the work, these send it and show it.

use anyhow::{bail, Context as _};
use herald_core::config::Config;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the server is and the admin key to call it with.
pub struct Target {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl Target {
    /// `url` (`--url` / `HERALD_URL`), else `http://` + the configured listen address; the
    /// admin key configured (`HERALD_ADMIN_KEY`), else the one `herald serve` keeps in the data
    /// directory.
    pub fn new(config: &Config, url: Option<String>) -> anyhow::Result<Target> {
        let base = url
            .unwrap_or_else(|| format!("http://{}", config.listen))
            .trim_end_matches('/')
            .to_owned();
        let key = match &config.admin_key {
            Some(k) => k.expose().to_owned(),
            None => {
                let path = config.data_dir.join("admin.key");
                std::fs::read_to_string(&path)
                    .map(|k| k.trim().to_owned())
                    .ok()
                    .filter(|k| !k.is_empty())
                    .with_context(|| {
                        format!(
                            "no admin key: set HERALD_ADMIN_KEY, or run from where {} is",
                            path.display()
                        )
                    })?
            }
        };
        Ok(Target {
            base,
            key,
            client: reqwest::Client::new(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }
}

/// The JSON answer of a response, or an error carrying the server's own message.
async fn answer(resp: reqwest::Response, doing: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    bail!("{doing}: {status}: {message}")
}

/// What an import sends.
#[derive(Debug, Clone, Copy)]
pub enum Import {
    Users,
    Devices,
}

impl Import {
    fn path(self) -> &'static str {
        match self {
            Import::Users => "/v1/users/import",
            Import::Devices => "/v1/devices/import",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Import::Users => "users",
            Import::Devices => "devices",
        }
    }
}

/// Streams an NDJSON file to the import endpoint, the bytes sent on a progress bar, then waits
/// for the server to write them (it checks every line first: a bad line writes nothing and is
/// named in the error).
pub async fn import(target: &Target, what: Import, file: &Path) -> anyhow::Result<()> {
    use futures::StreamExt;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata().await?.len();
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("sending {}", what.noun()));
    let sent = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).inspect(move |chunk| {
        if let Ok(c) = chunk {
            sent.inc(c.len() as u64);
            if sent.position() >= len {
                sent.set_message(format!("the server is writing the {}…", what.noun()));
            }
        }
    });
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let resp = target
        .request(reqwest::Method::POST, what.path())
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| format!("sending {} to {}", file.display(), target.base));
    let result = match resp {
        Ok(resp) => answer(resp, &format!("importing {}", file.display())).await,
        Err(e) => Err(e),
    };
    bar.finish_and_clear();
    let done = result?;
    let secs = started.elapsed().as_secs_f64();
    let n = done["imported"].as_u64().unwrap_or(0);
    println!(
        "imported {n} {} in {secs:.1} s ({:.0}/s)",
        what.noun(),
        n as f64 / secs.max(1e-9)
    );
    if let Some(skipped) = done["skipped_unknown_users"].as_u64().filter(|s| *s > 0) {
        let named: Vec<&str> = done["unknown_users"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "skipped {skipped} devices of users that do not exist: {}{}",
            named.join(", "),
            if named.len() < skipped as usize {
                ", …"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The statuses a campaign does not leave.
fn finished(status: &str) -> bool {
    matches!(status, "completed" | "cancelled" | "failed")
}

/// One line on a campaign's deliveries: `push 120 sent 3 failed · email …`.
fn deliveries(c: &Value) -> String {
    let Some(map) = c["deliveries"].as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(channel, d)| {
            format!(
                "{channel} {} sent {} failed",
                d["sent"].as_u64().unwrap_or(0),
                d["failed"].as_u64().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Follows a campaign until it ends (or, for a broadcast, until it is live with its background
/// sends done): its batches on a progress bar, its status, rows written and deliveries beside.
/// Fails when the campaign ends failed or cancelled.
pub async fn watch(target: &Target, id: &str, every: Duration) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} batches  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let last = loop {
        let resp = target
            .request(reqwest::Method::GET, &format!("/v1/campaigns/{id}"))
            .send()
            .await
            .with_context(|| format!("asking {} for campaign {id}", target.base));
        let c = match resp {
            Ok(r) => answer(r, &format!("campaign {id}")).await,
            Err(e) => Err(e),
        };
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
        let status = c["status"].as_str().unwrap_or("?").to_owned();
        let p = &c["progress"];
        let (done, total) = (
            p["batches_done"].as_u64().unwrap_or(0),
            p["batches_total"].as_u64().unwrap_or(0),
        );
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(format!(
            "{status} · {} written · {}",
            p["notifications_written"].as_u64().unwrap_or(0),
            deliveries(&c)
        ));
        let live_broadcast = c["strategy"] == "broadcast" && status == "active" && done >= total;
        if finished(&status) || live_broadcast {
            break c;
        }
        tokio::time::sleep(every).await;
    };
    bar.finish_and_clear();
    let status = last["status"].as_str().unwrap_or("?");
    let p = &last["progress"];
    println!(
        "campaign {id} {status}: {} of {} users written ({} opted out, {} deferred by quiet hours); {}",
        p["notifications_written"].as_u64().unwrap_or(0),
        last["audience_size"].as_u64().unwrap_or(0),
        p["skipped_opted_out"].as_u64().unwrap_or(0),
        p["deferred_quiet_hours"].as_u64().unwrap_or(0),
        deliveries(&last)
    );
    match status {
        "failed" | "cancelled" => bail!("campaign {id} {status}"),
        _ => Ok(()),
    }
}
