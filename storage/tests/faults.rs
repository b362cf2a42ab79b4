//! Storage faults a store must survive without help: a disk that fills up mid-write. The
//! write fails whole, and once there is room again every pooled connection takes writes (no
//! connection is left inside a transaction that SQLite already rolled back).
//!
//! These cases mount a small tmpfs, which needs root: they run when `HERALD_TEST_FAULTS=1`
//! (as `.ci/run` sets it, where a mount that fails fails the run) and are skipped otherwise.

use chrono::Utc;
use herald_core::model::User;
use herald_core::ports::Directory;
use herald_storage::sqlite::SqliteDirectory;
use herald_storage::BackendUrl;

#[path = "support/small_disk.rs"]
mod small_disk;
use small_disk::SmallDisk;

fn users(prefix: &str, n: usize) -> Vec<User> {
    let now = Utc::now();
    (0..n)
        .map(|i| User {
            id: format!("{prefix}-{i:06}"),
            email: Some(format!("{prefix}-{i}@example.com")),
            phone: None,
            attributes: [("bio".to_owned(), serde_json::json!("x".repeat(200)))]
                .into_iter()
                .collect(),
            created_at: now,
            updated_at: now,
        })
        .collect()
}

#[tokio::test]
async fn a_write_that_fills_the_disk_fails_whole_and_every_connection_writes_again_after() {
    let Some(disk) = SmallDisk::mount("8m", env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    let url = BackendUrl::parse(&format!(
        "sqlite://{}",
        disk.dir.join("directory.db").display()
    ))
    .unwrap();
    let dir = SqliteDirectory::open(&url).await.unwrap();
    dir.upsert_users(&users("before", 10)).await.unwrap();

    let filler = disk.fill(300 * 1024);
    // About 5 MB of users into 300 KB: the disk fills up mid-transaction.
    let err = dir
        .upsert_users(&users("big", 20_000))
        .await
        .expect_err("the disk is full");
    eprintln!("disk full: {err} ({:?})", err.source);
    let all = herald_core::filter::Filter::match_all();
    assert_eq!(
        dir.count_users(&all, Utc::now()).await.unwrap(),
        10,
        "nothing of the failed write is kept"
    );

    // Room again: every connection of the pool takes writes (more writes than connections,
    // run concurrently, so each connection is used).
    std::fs::remove_file(filler).unwrap();
    let mut writes = Vec::new();
    for i in 0..32 {
        let dir = &dir;
        writes.push(async move { dir.upsert_users(&users(&format!("after{i}"), 5)).await });
    }
    for r in futures::future::join_all(writes).await {
        r.expect("writes work again once there is room");
    }
    assert_eq!(
        dir.count_users(&all, Utc::now()).await.unwrap(),
        10 + 32 * 5
    );
}
