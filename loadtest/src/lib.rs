//! `herald-loadtest` as a library: load scenarios that drive a running Herald through its
//! public HTTP API only, each returning a [`Report`] of what it measured.
//!
//! Scenarios: [`seed`] (bulk-import synthetic users), [`fanout`] (seed 004's sweep of
//! campaign sizes), [`inbox`] (open-loop inbox reads), [`broadcast`] (visibility of a
//! broadcast in sampled inboxes), [`live`] (N WebSockets, server RSS per socket, broadcast
//! latency to all of them), [`push`] / [`push_with_fcm`] (device sends per second through
//! the push gateway to a fake FCM run by the harness) and [`limits`] (the references the
//! others are measured against in the same run: bare SQLite inserts of inbox rows, the
//! server's trivial route, and the ratios of the others' figures to them).
//!
//! Each takes the base URL, the admin key and the scenario's options (the same structs the
//! CLI parses, so `Default` gives the CLI's defaults), prints progress to stderr and returns
//! the report; it neither reads files nor exits. [`report::save`] writes the report as JSON
//! and markdown, and [`plot`] its charts. The binary (`main.rs`) is a thin CLI over these.

mod broadcast;
mod fanout;
mod inbox;
mod limits;
mod live;
pub mod plot;
mod push;
pub mod report;
mod seed;
pub mod stats;

pub use broadcast::{broadcast, BroadcastOpts};
pub use fanout::{fanout, seed_004_target, FanoutOpts};
pub use inbox::{inbox, InboxOpts};
pub use limits::{limits, LimitsOpts};
pub use live::{live, live_worker, LiveOpts};
pub use push::{push, push_with_fcm, write_fcm_credentials, PushFigures, PushOpts};
pub use report::{save, Report, Saved, Table};
pub use seed::{seed, SeedOpts};

use anyhow::{bail, Context as _};
use serde_json::Value;

/// Load goes to loopback or to a host the operator names explicitly in
/// `HERALD_LOADTEST_ALLOW_HOST`; never anywhere by default.
pub fn check_target(url: &str) -> anyhow::Result<()> {
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

/// `n` user ids spread evenly over the first `population` seeded users.
pub fn spread_ids(prefix: &str, n: u64, population: u64) -> Vec<String> {
    let n = n.clamp(1, population.max(1));
    let step = (population / n).max(1);
    (0..n)
        .map(|i| format!("{prefix}-{:08}", i * step))
        .collect()
}

/// Inbox tokens for `ids`, minted one after the other through the admin API.
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
            .await
            .with_context(|| format!("minting a token for {id}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("minting a token for {id}: {status} {body}");
        }
        out.push(body["token"].as_str().context("token")?.to_owned());
    }
    Ok(out)
}

/// Options whose every field has a CLI default: `Default` is what the CLI would parse from
/// no flags, so the defaults live in one place (the `#[arg]` attributes).
fn cli_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    cmd.try_get_matches_from(std::iter::empty::<String>())
        .and_then(|m| T::from_arg_matches(&m))
        .expect("every scenario option has a default or is optional")
}

macro_rules! default_from_cli {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                cli_defaults()
            }
        }
    )*};
}
default_from_cli!(
    SeedOpts,
    FanoutOpts,
    InboxOpts,
    BroadcastOpts,
    LiveOpts,
    PushOpts,
    LimitsOpts
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_pass_and_others_need_to_be_named() {
        assert!(check_target("http://127.0.0.1:8080").is_ok());
        assert!(check_target("http://localhost:8080/x").is_ok());
        assert!(check_target("http://[::1]:8080").is_ok());
        assert!(check_target("http://loadtest-elsewhere.invalid:8080").is_err());
    }

    #[test]
    fn ids_are_spread_evenly_over_the_population() {
        assert_eq!(
            spread_ids("user", 3, 300),
            ["user-00000000", "user-00000100", "user-00000200"]
        );
        assert_eq!(spread_ids("u", 5, 2), ["u-00000000", "u-00000001"]);
    }

    #[test]
    fn options_default_to_the_cli_defaults() {
        let seed = SeedOpts::default();
        assert_eq!(
            (seed.users, seed.per_request, seed.seed),
            (100_000, 1_000_000, 7)
        );
        assert_eq!(seed.prefix, "user");
        assert_eq!(
            FanoutOpts::default().sizes,
            [1, 100, 10_000, 100_000, 1_000_000]
        );
        assert_eq!(FanoutOpts::default().channels, ["in_app"]);
        assert_eq!(InboxOpts::default().rate, 2000);
        assert_eq!(BroadcastOpts::default().sample, 20);
        let live = LiveOpts::default();
        assert_eq!((live.connections, live.source_addrs), (1000, 8));
        assert_eq!(live.population, None);
        assert_eq!(PushOpts::default().fcm_listen, "127.0.0.1:9400");
    }
}
