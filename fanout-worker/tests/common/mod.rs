//! The harness of the fan-out suites: the embedded backends in a temp dir with a manual clock,
//! so the engine is driven step by step and time moves only when a test says so.
#![allow(dead_code)]

#[path = "../../../storage/tests/support/mysql.rs"]
mod mysql_support;

use chrono::{DateTime, Utc};
use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::{Context, ManualClock};
use std::path::Path;
use std::sync::Arc;

/// An RFC 3339 instant.
pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339 time")
        .with_timezone(&Utc)
}

pub struct Harness {
    pub ctx: Context,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
}

/// Opens the embedded backends in `dir` with a manual clock, like a process starting there.
pub async fn open_ctx(
    dir: &Path,
    clock: &ManualClock,
    configure: impl FnOnce(&mut Config),
) -> Context {
    let mut config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    mysql_support::configure_backends(&mut config).await;
    configure(&mut config);
    let ports = herald_storage::open_ports(&config)
        .await
        .expect("open embedded backends");
    Context {
        config: Arc::new(config),
        ports,
        clock: Arc::new(clock.clone()),
        secrets: Secrets {
            admin_key: Secret::new("test-admin-key-0123456789"),
            token_secret: Secret::new("test-token-secret"),
        },
        workers: Default::default(),
    }
}

/// A fresh data dir whose clock reads `now`.
pub async fn harness_at(now: &str, configure: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(at(now));
    let ctx = open_ctx(dir.path(), &clock, configure).await;
    Harness { ctx, clock, dir }
}
