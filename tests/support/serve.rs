//! `herald serve` as a process of its own on a data directory and a port the kernel picks, as an operator
//! starts it (the admin key generated into the data directory), for the suites that talk to it
//! from outside (`operator_cli.rs`, `metrics_lint.rs`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "listen.rs"]
mod listen;

/// `herald` with no `HERALD_*` variable but those given.
pub fn herald(envs: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(envs.iter().map(|(k, v)| (*k, *v)));
    cmd
}

pub struct Serve {
    child: Child,
    pub base: String,
    pub key: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn serve(data: &Path) -> Serve {
    let mut child = herald(&[("HERALD_DATA_DIR", data)])
        .arg("serve")
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let Some(base) = listen::announced_base(&mut child, Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`herald serve` did not say where it listens");
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{base}/healthz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(tokio::time::Instant::now() < deadline, "serve started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = std::fs::read_to_string(data.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    Serve { child, base, key }
}
