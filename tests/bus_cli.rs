//! `herald bus lag` and `herald bus replay`: the real binary on a data directory whose bus and delay store hold work.

use herald_core::config::Config;
use herald_core::model::OutMessage;
use herald_core::ports::DelayedMessage;
use herald_core::topics;
use std::process::Command;

#[tokio::test]
async fn bus_lag_prints_each_groups_backlog_and_what_waits_in_the_delay_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let ports = herald_storage::open_ports(&config).await.unwrap();
    let message = |n: u8| OutMessage {
        key: Some("c1".into()),
        payload: vec![n],
    };
    ports
        .bus
        .publish("channel.push", &[message(1), message(2), message(3)])
        .await
        .unwrap();
    ports
        .bus
        .publish("channel.email", &[message(4)])
        .await
        .unwrap();
    // One push message taken and done: it no longer counts.
    let member = ports
        .bus
        .consumer("channel.push", topics::GATEWAY)
        .await
        .unwrap();
    let got = member.poll(1, std::time::Duration::ZERO).await.unwrap();
    member.commit(&[got[0].receipt.clone()]).await.unwrap();
    drop(member);
    let due = chrono::DateTime::parse_from_rfc3339("2030-01-01T07:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    ports
        .delays
        .schedule(&[
            DelayedMessage {
                id: "a".into(),
                topic: "channel.sms".into(),
                message: message(5),
                due,
            },
            DelayedMessage {
                id: "b".into(),
                topic: "channel.sms".into(),
                message: message(6),
                due: due + chrono::Duration::hours(1),
            },
        ])
        .await
        .unwrap();
    drop(ports);

    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["bus"])
            .args(if args.first() == Some(&"replay") {
                &[][..]
            } else {
                &["lag"][..]
            })
            .args(args)
            .env("HERALD_DATA_DIR", dir.path())
            .env_remove("HERALD_CONFIG")
            .output()
            .expect("run herald bus lag");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let report: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    let lag = |topic: &str| {
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["topic"] == topic)
            .unwrap_or_else(|| panic!("{topic} in {report}"))["lag"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(lag("channel.push"), 2);
    assert_eq!(lag("channel.email"), 1);
    assert_eq!(lag("fanout.batches"), 0);
    assert_eq!(report["delays"]["waiting"], 2);
    assert_eq!(report["delays"]["next_due"], "2030-01-01T07:00:00Z");

    let table = run(&[]);
    assert!(
        table.contains("channel.push") && table.contains("push-gateway"),
        "{table}"
    );
    assert!(
        table.contains("delay store: 2 waiting, next due 2030-01-01T07:00:00+00:00"),
        "{table}"
    );

    // Replay: the committed push message comes back once the group is moved to the start.
    let replay = [
        "replay",
        "--topic",
        "channel.push",
        "--group",
        "push-gateway",
    ];
    let dry = run(&[&replay[..], &["--from", "earliest", "--dry-run"]].concat());
    assert!(dry.contains("would receive 3 messages"), "{dry}");
    let lag_now = |run: &dyn Fn(&[&str]) -> String| {
        let r: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
        r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["topic"] == "channel.push")
            .unwrap()["lag"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(lag_now(&run), 2, "a dry run moves nothing");
    let moved = run(&[&replay[..], &["--from", "earliest"]].concat());
    assert!(moved.contains("3 messages to receive"), "{moved}");
    assert_eq!(lag_now(&run), 3);
    // From a time after every publish: nothing left to receive.
    let later = run(&[&replay[..], &["--from", "2099-01-01T00:00:00Z"]].concat());
    assert!(later.contains("0 messages to receive"), "{later}");
    assert_eq!(lag_now(&run), 0);
}

#[test]
fn bus_replay_refuses_a_start_that_is_not_a_time_an_offset_or_earliest() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "bus",
            "replay",
            "--topic",
            "channel.push",
            "--group",
            "push-gateway",
        ])
        .args(["--from", "yesterday"])
        .env("HERALD_DATA_DIR", dir.path())
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not `earliest`, an offset or an RFC 3339 time"),
        "{err}"
    );
}
