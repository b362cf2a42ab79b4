//! The operator commands against a running `herald serve`: `herald users import`, `herald
//! devices import` and `herald campaigns watch`, as an operator runs them (the admin key read
//! from the data directory `serve` wrote it to, the server named by `--url`).

use std::path::Path;
use std::process::Output;

#[path = "support/serve.rs"]
mod serve;
use serve::{herald, serve};

/// Runs `herald <args> --url <base>` from the operator's side, the key from `data`.
async fn run(data: &Path, base: &str, args: &[&str]) -> Output {
    let mut cmd = herald(&[("HERALD_DATA_DIR", data)]);
    cmd.args(args).arg("--url").arg(base);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_and_a_watched_campaign_run_through_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve(&data).await;

    let users = dir.path().join("users.ndjson");
    let lines: String = (0..500)
        .map(|i| format!("{{\"id\":\"op-{i:03}\",\"attributes\":{{\"n\":{i}}}}}\n"))
        .collect();
    std::fs::write(&users, lines).unwrap();
    let out = run(
        &data,
        &server.base,
        &["users", "import", users.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("imported 500 users in "),
        "{}",
        text(&out.stdout)
    );

    let devices = dir.path().join("devices.ndjson");
    let mut lines: String = (0..10)
        .map(|i| {
            format!("{{\"user_id\":\"op-{i:03}\",\"platform\":\"fcm\",\"token\":\"op-t{i}\"}}\n")
        })
        .collect();
    lines.push_str("{\"user_id\":\"ghost\",\"platform\":\"apns\",\"token\":\"g\"}\n");
    std::fs::write(&devices, lines).unwrap();
    let out = run(
        &data,
        &server.base,
        &["devices", "import", devices.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.starts_with("imported 10 devices in "), "{said}");
    assert!(
        said.contains("skipped 1 devices of users that do not exist: ghost"),
        "{said}"
    );

    // A bad line: the server's message, naming it, and a failure exit; nothing written.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"id\":\"op-new\"}\n{\"id\":\"bad id\"}\n").unwrap();
    let out = run(
        &data,
        &server.base,
        &["users", "import", bad.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );
    let client = reqwest::Client::new();
    let got = client
        .get(format!("{}/v1/users/op-new", server.base))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 404);

    // A campaign to the 500 users, watched until it completes.
    let created: serde_json::Value = client
        .post(format!("{}/v1/campaigns", server.base))
        .bearer_auth(&server.key)
        .json(&serde_json::json!({
            "audience": {"users": (0..500).map(|i| format!("op-{i:03}")).collect::<Vec<_>>()},
            "content": {"title": "Hello", "body": "b"},
            "channels": ["in_app"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a campaign id").to_owned();
    let out = run(
        &data,
        &server.base,
        &["campaigns", "watch", &id, "--every-ms", "100"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!(
            "campaign {id} completed: 500 of 500 users written"
        )),
        "{said}"
    );

    // Unknown campaign; no admin key to be found.
    let out = run(&data, &server.base, &["campaigns", "watch", "nope"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    let elsewhere = dir.path().join("elsewhere");
    let out = run(&elsewhere, &server.base, &["campaigns", "watch", &id]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no admin key"),
        "{}",
        text(&out.stderr)
    );
}
