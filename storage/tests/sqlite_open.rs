//! Opening one SQLite file from several places at once: the roles of a deployment started side
//! by side (`herald api` and `herald serve` on one data directory) open, create and migrate the
//! same files at the same moment.

use herald_storage::sqlite::SqliteDirectory;
use herald_storage::BackendUrl;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_file_opened_by_several_stores_at_once_opens_for_each_of_them() {
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let url = BackendUrl::parse(&format!(
            "sqlite://{}",
            dir.path().join("directory.db").display()
        ))
        .unwrap();
        let opens = (0..6).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { SqliteDirectory::open(&url).await })
        });
        for open in futures::future::join_all(opens).await {
            if let Err(e) = open.unwrap() {
                panic!("round {round}: {e} ({:?})", e.source);
            }
        }
    }
}
