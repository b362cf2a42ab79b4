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

/// A standalone copy (no WAL) of the SQLite file `source`, named `copy`, whose pages of
/// `table` are overwritten with garbage.
async fn damaged_copy(dir: &std::path::Path, source: &str, copy: &str, table: &str) {
    use sqlx::{ConnectOptions, Connection};
    use std::io::{Seek, SeekFrom, Write};
    let copy = dir.join(copy);
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join(source))
        .connect()
        .await
        .unwrap();
    sqlx::query(&format!("VACUUM INTO '{}'", copy.display()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&copy)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let roots: Vec<(i64,)> =
        sqlx::query_as("SELECT rootpage FROM sqlite_master WHERE tbl_name = ? AND rootpage > 1")
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert!(!roots.is_empty());
    let mut file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    for (root,) in roots {
        file.seek(SeekFrom::Start(((root - 1) * page_size) as u64))
            .unwrap();
        file.write_all(&vec![0xA5; page_size as usize]).unwrap();
    }
}

/// The error must say the file is corrupt and name it.
fn assert_names_corrupt_file(err: herald_core::Error, file: &str) {
    assert_eq!(err.kind, herald_core::ErrorKind::Unavailable);
    assert!(
        err.message.contains(file) && err.message.contains("corrupt"),
        "{}",
        err.message
    );
}

fn sqlite_url(dir: &std::path::Path, name: &str) -> BackendUrl {
    BackendUrl::parse(&format!("sqlite://{}", dir.join(name).display())).unwrap()
}

/// A damaged page is answered with an error that names the file (so the operator knows which
/// store to restore), not a bare "database unavailable". Needs no root: the file is a copy.
#[tokio::test]
async fn a_corrupt_page_is_reported_naming_the_database_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SqliteDirectory::open(&sqlite_url(tmp.path(), "directory.db"))
        .await
        .unwrap();
    dir.upsert_users(&users("u", 2_000)).await.unwrap();
    damaged_copy(tmp.path(), "directory.db", "damaged.db", "users").await;

    let damaged = SqliteDirectory::open(&sqlite_url(tmp.path(), "damaged.db"))
        .await
        .unwrap();
    let err = damaged
        .get_users(&["u-000001".to_owned()])
        .await
        .expect_err("the page is damaged");
    assert_names_corrupt_file(err, "damaged.db");
}

/// The inbox's reads run on reader connections of their own (not the pool's): a damaged page
/// is reported the same way there, and the next read (a new reader connection) still meets
/// the damage rather than a reader left broken.
#[tokio::test]
async fn a_corrupt_inbox_page_is_reported_naming_the_database_file_by_its_readers() {
    use herald_core::model::{InboxFilter, Notification};
    use herald_core::ports::InboxStore;
    use herald_storage::sqlite::SqliteInbox;
    let tmp = tempfile::tempdir().unwrap();
    let inbox = SqliteInbox::open(&sqlite_url(tmp.path(), "inbox.db"))
        .await
        .unwrap();
    let now = Utc::now();
    let rows: Vec<Notification> = (0..2_000)
        .map(|i| Notification {
            id: uuid::Uuid::new_v4(),
            user_id: "u".to_owned(),
            campaign_id: None,
            title: format!("t{i}"),
            body: "x".repeat(200),
            category: None,
            data: serde_json::json!({}),
            created_at: now + chrono::Duration::microseconds(i),
            read_at: None,
            seen_at: None,
            archived_at: None,
        })
        .collect();
    inbox.write_batch(&rows).await.unwrap();
    let (page, _) = inbox
        .page_with_counts("u", None, 20, InboxFilter::default())
        .await
        .unwrap();
    assert_eq!(page.len(), 20);
    damaged_copy(tmp.path(), "inbox.db", "damaged-inbox.db", "notifications").await;

    let damaged = SqliteInbox::open(&sqlite_url(tmp.path(), "damaged-inbox.db"))
        .await
        .unwrap();
    for _ in 0..2 {
        let err = damaged
            .page_with_counts("u", None, 20, InboxFilter::default())
            .await
            .expect_err("the page is damaged");
        assert_names_corrupt_file(err, "damaged-inbox.db");
    }
}

/// Connections the pool opens while the file cannot be written (made immutable: `chattr +i`,
/// which holds even for root) are opened read-only by SQLite and stay so; once the file is
/// writable again every write must succeed, so none of them may be handed out again.
#[tokio::test]
async fn connections_opened_while_the_file_was_read_only_do_not_outlive_the_fault() {
    if std::env::var("HERALD_TEST_FAULTS").as_deref() != Ok("1") {
        eprintln!("skipped: set HERALD_TEST_FAULTS=1 (as root) to run the read-only file case");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("directory.db");
    let url = BackendUrl::parse(&format!("sqlite://{}", file.display())).unwrap();
    let dir = std::sync::Arc::new(SqliteDirectory::open(&url).await.unwrap());
    dir.upsert_users(&users("before", 10)).await.unwrap();
    let files = [file.clone(), tmp.path().join("directory.db-wal")];
    let chattr = |flag: &str| {
        let ok = std::process::Command::new("chattr")
            .arg(flag)
            .args(&files)
            .status()
            .expect("run chattr")
            .success();
        assert!(ok, "chattr {flag} failed (needs root and ext4 or similar)");
    };
    chattr("+i");
    // Concurrent reads make the pool open every connection it may, all while the file is
    // immutable.
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let dir = dir.clone();
            tokio::spawn(async move {
                let all = herald_core::filter::Filter::match_all();
                for _ in 0..20 {
                    dir.count_users(&all, Utc::now()).await.unwrap();
                }
            })
        })
        .collect();
    for r in reads {
        r.await.unwrap();
    }
    assert!(dir.upsert_users(&users("during", 1)).await.is_err());
    chattr("-i");
    let writes: Vec<_> = (0..16)
        .map(|i| {
            let dir = dir.clone();
            tokio::spawn(async move { dir.upsert_users(&users(&format!("after{i}"), 5)).await })
        })
        .collect();
    for w in writes {
        w.await
            .unwrap()
            .expect("every write succeeds once the file is writable");
    }
}
