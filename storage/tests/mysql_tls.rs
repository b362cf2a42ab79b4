//! The MySQL adapters over TLS: `ssl-mode=required` in a store's URL encrypts its connections.
//!
//! Run when `HERALD_TEST_MYSQL_TLS_URL` names a server and a user who must use TLS (`REQUIRE
//! SSL`); `.ci/run` starts such a MariaDB on port 3307 with a self-signed certificate (which
//! `required` encrypts to without verifying; `verify_ca` with `ssl-ca=` verifies).

use herald_storage::BackendUrl;

fn tls_url() -> Option<String> {
    std::env::var("HERALD_TEST_MYSQL_TLS_URL")
        .ok()
        .filter(|v| !v.is_empty())
}

#[tokio::test]
async fn a_store_opened_with_ssl_mode_required_works_for_a_user_who_must_use_tls() {
    let Some(raw) = tls_url() else { return };
    let url = format!("{raw}?ssl-mode=required&max_connections=2");
    let store = herald_storage::open_deliveries(&BackendUrl::parse(&url).unwrap())
        .await
        .expect("opens over TLS");
    let key = format!("tls-{}", uuid::Uuid::new_v4());
    store
        .mark_processed(&key, chrono::Utc::now())
        .await
        .unwrap();
    assert!(store.is_processed(&key).await.unwrap());

    // What sqlx makes of the same URL is an encrypted session.
    use sqlx::{ConnectOptions, Row};
    let mut conn = format!("{raw}?ssl-mode=required")
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    let row = sqlx::query("SHOW STATUS LIKE 'Ssl_version'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let version: String = row.try_get_unchecked(1).unwrap();
    assert!(version.starts_with("TLS"), "session is {version:?}");
}

#[tokio::test]
async fn the_same_user_without_tls_is_refused_and_the_store_says_so() {
    let Some(raw) = tls_url() else { return };
    let url = BackendUrl::parse(&format!("{raw}?ssl-mode=disabled")).unwrap();
    let err = herald_storage::open_deliveries(&url)
        .await
        .err()
        .expect("a user who must use TLS cannot connect without it");
    assert_eq!(err.kind, herald_core::ErrorKind::Unavailable);
    assert!(err.message.contains("cannot open MySQL"), "{}", err.message);
}
