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
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        if std::env::var("HERALD_TEST_FAULTS").as_deref() != Ok("1") {
            eprintln!("skipped: set HERALD_TEST_FAULTS=1 (as root) to run the storage fault cases");
            return None;
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("herald-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed (HERALD_TEST_FAULTS needs root)"
        );
        Some(SmallDisk { dir })
    }

    /// Fills the disk with a file, leaving about `leave` bytes free.
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self.dir.join("filler");
        let free = free_bytes(&self.dir);
        let size = free.saturating_sub(leave);
        std::fs::write(&path, vec![0u8; size as usize]).unwrap();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

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
    let Some(disk) = SmallDisk::mount("8m") else {
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
