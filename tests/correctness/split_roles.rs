//! Roles run apart must agree: a preference written through the API process reaches the
//! fan-out process's next batch, and a role that shares the inbox token secret with others
//! refuses to start without it (instead of generating its own, so that tokens minted by one
//! process are refused by another).

use crate::harness::*;
use herald_core::worker::AbortOnDrop;
use herald_core::SystemClock;
use reqwest::Method;
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_opt_out_written_through_the_api_process_reaches_a_separate_fanout_process() {
    // The API process (the harness, without fan-out) and a fan-out process of its own: two
    // contexts on one data directory, each with its own in-process preference cache.
    let app = spawn(Options {
        fanout: false,
        ..Options::default()
    })
    .await;
    let mut config = (*app.ctx.config).clone();
    config.fanout.preference_ttl_secs = 1;
    let fanout_ctx = open_ctx(config, Arc::new(SystemClock)).await;
    let stop = CancellationToken::new();
    let _fanout = AbortOnDrop::spawn(herald_fanout::run(fanout_ctx, stop.clone()));

    app.ok(
        Method::PUT,
        "/v1/users/ola",
        json!({"email": "ola@example.com", "attributes": {}}),
    )
    .await;
    let campaign = json!({
        "audience": {"user": "ola"},
        "content": {"title": "News", "body": "Hello"},
        "channels": ["in_app", "email"],
    });
    // The first campaign fills the fan-out process's cache: email allowed.
    let first = app.campaign(campaign.clone()).await;
    app.wait_completed(&first, Duration::from_secs(20)).await;
    assert_eq!(app.deliveries(&first, "email").await.0, 1);

    // Opt out through the API process; the fan-out process never hears of it directly.
    app.ok(
        Method::PUT,
        "/v1/users/ola/preferences",
        json!({"channels": {"email": false}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = app.campaign(campaign).await;
    let done = app.wait_completed(&second, Duration::from_secs(20)).await;
    assert_eq!(
        app.deliveries(&second, "email").await.0,
        0,
        "the opt-out is honoured: {done}"
    );
    assert_eq!(done["progress"]["notifications_written"], 1);
    stop.cancel();
}

/// Runs `herald <role>` with only these `HERALD_*` variables; its exit status and stderr if it
/// stops within `within`, `None` if it is still running (then it is killed).
fn run_role(role: &str, env: &[(&str, &str)], within: Duration) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg(role);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HERALD_DATA_DIR", dir.path())
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_ADMIN_KEY", ADMIN_KEY)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn herald");
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status.success(), err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn api_and_inbox_run_apart_refuse_to_start_without_the_shared_token_secret() {
    for role in ["api", "inbox"] {
        let refused = Duration::from_secs(20);
        let (ok, err) = run_role(role, &[], refused).expect("stops at once");
        assert!(!ok, "{role} started without the token secret");
        assert!(err.contains("HERALD_INBOX__TOKEN_SECRET"), "{role}: {err}");
        assert!(err.contains("inbox.token_secret"), "{role}: {err}");

        // A secret too short to be one is refused too, naming the rule.
        let (ok, err) = run_role(role, &[("HERALD_INBOX__TOKEN_SECRET", "short")], refused)
            .expect("stops at once");
        assert!(!ok);
        assert!(err.contains("at least 32 bytes"), "{role}: {err}");

        // With the shared secret configured, it starts (and is stopped by the test).
        assert!(
            run_role(
                role,
                &[("HERALD_INBOX__TOKEN_SECRET", TOKEN_SECRET)],
                Duration::from_secs(3)
            )
            .is_none(),
            "{role} runs with the secret"
        );
    }
}
