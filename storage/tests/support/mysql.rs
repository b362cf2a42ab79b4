//! A fresh MySQL database per case, on the server of `HERALD_TEST_MYSQL_URL` (shared by the
//! storage conformance suites and the end-to-end suites).
#![allow(dead_code)]

/// A new, empty MySQL database on the server of `HERALD_TEST_MYSQL_URL` (named `prefix` and a
/// random suffix), as a URL; `None` when the variable is not set.
pub async fn fresh_mysql_database(prefix: &str) -> Option<String> {
    use sqlx::{ConnectOptions, Connection};
    let raw = std::env::var("HERALD_TEST_MYSQL_URL")
        .ok()
        .filter(|v| !v.is_empty())?;
    let db = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut conn = raw
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .expect("HERALD_TEST_MYSQL_URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("HERALD_TEST_MYSQL_URL is set but MySQL is unusable: {e}"));
    sqlx::query(&format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        .execute(&mut conn)
        .await
        .expect("create a database");
    conn.close().await.ok();
    let (server, _) = raw
        .rsplit_once('/')
        .expect("HERALD_TEST_MYSQL_URL names a database");
    Some(format!("{server}/{db}"))
}
