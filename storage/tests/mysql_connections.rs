//! MySQL connections lost under a store (a failover, a server restart, a proxy's idle timeout,
//! an operator's `KILL`): the store keeps answering on new connections, and what it wrote
//! before is intact. Run when `HERALD_TEST_MYSQL_URL` is set.

mod common;

use herald_core::model::*;
use sqlx::{ConnectOptions, Row};

fn campaign(id: &str) -> Campaign {
    Campaign {
        id: id.to_owned(),
        audience: Audience::All(true),
        content: CampaignContent::Inline(TitleBody {
            title: "Sale".into(),
            body: "Today only".into(),
        }),
        channels: vec![Channel::InApp],
        category: None,
        priority: Priority::Normal,
        data: serde_json::Value::Null,
        starts_at: None,
        expires_at: None,
        strategy: Strategy::Batch,
        push_when: PushWhen::Always,
        online_push_delay_s: None,
        status: CampaignStatus::FanningOut,
        audience_size: 0,
        progress: Progress::default(),
        deliveries: Default::default(),
        created_at: common::utc("2026-01-01T00:00:00Z"),
        started_at: None,
        completed_at: None,
        checkpoint: Checkpoint::default(),
    }
}

/// Kills every connection the server has open on database `db`; returns how many.
async fn kill_connections_to(db: &str) -> usize {
    let raw = std::env::var("HERALD_TEST_MYSQL_URL").unwrap();
    let mut admin = raw
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ids: Vec<i64> = sqlx::query("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?")
        .bind(db)
        .fetch_all(&mut admin)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i64, _>("ID"))
        .collect();
    for id in &ids {
        // A connection may have gone by itself meanwhile.
        let _ = sqlx::query(&format!("KILL CONNECTION {id}"))
            .execute(&mut admin)
            .await;
    }
    ids.len()
}

#[tokio::test]
async fn a_store_whose_connections_the_server_killed_keeps_answering() {
    let Some(url) = common::fresh_mysql_url("herald_conn").await else {
        return;
    };
    let db = url.raw.rsplit('/').next().unwrap().to_owned();
    let store = herald_storage::open_campaigns(&url).await.unwrap();
    let c = campaign("killed-connections");
    store.insert_campaign(&c).await.unwrap();
    let delta = Progress {
        notifications_written: 10,
        ..Progress::default()
    };
    assert!(store
        .record_batch(&c.id, 0, &delta, &[], &[])
        .await
        .unwrap());

    assert!(
        kill_connections_to(&db).await > 0,
        "the pool held connections"
    );

    // A transaction (the batch) and a plain read, each on a connection opened anew.
    assert!(store
        .record_batch(&c.id, 1, &delta, &[], &[])
        .await
        .unwrap());
    assert!(!store
        .record_batch(&c.id, 0, &delta, &[], &[])
        .await
        .unwrap());
    let got = store.get_campaign(&c.id).await.unwrap().unwrap();
    assert_eq!(got.progress.batches_done, 2);
    assert_eq!(got.progress.notifications_written, 20);
}

/// MySQL commits each DDL statement on its own: a migration cut short after some statements
/// is run again whole by the next start, and a drop that finds nothing to drop counts as done.
#[tokio::test]
async fn a_migration_version_run_again_after_an_interruption_completes() {
    let Some(url) = common::fresh_mysql_url("herald_migrate").await else {
        return;
    };
    herald_storage::open_inbox(&url, herald_storage::inbox_retention(90))
        .await
        .unwrap();
    // As if the run had stopped after its statements, before recording the version.
    let mut conn = url
        .raw
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    let deleted = sqlx::query(
        "DELETE FROM herald_migrations WHERE port = 'inbox' \
         AND version IN ('0002_read_marks', '0003_states')",
    )
    .execute(&mut conn)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(deleted, 2, "a drop and two added columns run again");
    let inbox = herald_storage::open_inbox(&url, herald_storage::inbox_retention(90))
        .await
        .unwrap();
    inbox.ping().await.unwrap();
    let applied: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM herald_migrations WHERE port = 'inbox'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get("n");
    assert_eq!(applied, 3);
}
