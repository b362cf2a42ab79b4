//! The real `herald` binary as separate role processes on one data directory, for the suites
//! that kill, stop or spread roles (`tests/hostile`, `tests/distributed`, the admin API suite
//! with `HERALD_TEST_ROLES=processes`). The including module's parent provides `ADMIN_KEY`.
#![allow(dead_code)]

use super::ADMIN_KEY;
use reqwest::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "listen.rs"]
mod listen;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The inbox token secret every role of a test shares.
pub const SECRET: &str = "faults-token-secret-0123456789abcdef-xyz";

/// A running `herald <role>`, killed and reaped on drop.
pub struct Role {
    child: Option<Child>,
    pub base: String,
    pub log: PathBuf,
}

impl Role {
    /// Starts the role on a port the kernel picks (`HERALD_LISTEN=127.0.0.1:0`) and returns
    /// once it has bound it (the port it prints on stdout). A port chosen here and handed over
    /// would leave a window in which another test's process could take it, and this test would
    /// then talk to that process.
    pub fn start(role: &str, data: &Path, fcm: &str, extra: &[(&str, &str)]) -> Role {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = data.join(format!("{role}-{n}.log"));
        let mut cmd = Command::new(herald_bin());
        cmd.arg(role);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HERALD_DATA_DIR", data)
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_ADMIN_KEY", ADMIN_KEY)
            .env("HERALD_INBOX__TOKEN_SECRET", SECRET)
            .env("HERALD_PUSH__FCM__ENDPOINT", fcm)
            .env(
                "HERALD_PUSH__FCM__CREDENTIALS_FILE",
                data.join("fake-fcm-service-account.json"),
            )
            .env("HERALD_PUSH__FCM__H2C", "true")
            .env("HERALD_PUSH__FCM__BATCH_WINDOW_MS", "5")
            .env("HERALD_PUSH__BACKOFF_BASE_MS", "50")
            .env("HERALD_PUSH__BACKOFF_MAX_MS", "500")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        // On a failure the Role is dropped, which kills and reaps the process.
        let mut started = Role {
            child: Some(cmd.spawn().expect("spawn herald")),
            base: String::new(),
            log,
        };
        match listen::announced_base(started.child.as_mut().unwrap(), Duration::from_secs(60)) {
            Some(url) => started.base = url,
            None => panic!(
                "`herald {role}` did not say where it listens within 60 s (or exited); its log:\n{}",
                std::fs::read_to_string(&started.log).unwrap_or_default()
            ),
        }
        started
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit: within the 10 s the requests under way are given
    /// (docs/operations.md) and 10 s more for the workers to stop. A process still running
    /// then fails the case with the end of its log (the log file itself goes with the test's
    /// temporary directory, so a CI run would otherwise say no more than that it timed out).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            for _ in 0..400 {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "a clean exit on SIGTERM: {status}");
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "did not stop within 20 s of SIGTERM; the end of {}:\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/healthz", self.base))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the role at {} did not answer /healthz within 30 s; its log:\n{}",
                self.base,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `herald` binary: cargo's own for the root package's suites; for another package's,
/// `HERALD_TEST_BIN` or else the one the workspace build left beside the test executable's
/// `deps/` folder (`target/debug/herald`: build it first, as `cargo test --workspace` does).
pub fn herald_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_herald") {
        return bin.into();
    }
    if let Some(bin) = std::env::var_os("HERALD_TEST_BIN").filter(|b| !b.is_empty()) {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("herald");
    assert!(
        bin.exists(),
        "no herald binary at {}: build the workspace first or set HERALD_TEST_BIN",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An admin client of a role's API.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Puts user `id` in the directory with one FCM device `token`.
    pub async fn user_with_device(&self, id: &str, token: &str) {
        let (s, body) = self
            .call(
                Method::PUT,
                &format!("/v1/users/{id}"),
                Some(serde_json::json!({"attributes": {}})),
            )
            .await;
        assert!(s.is_success(), "{body}");
        let (s, body) = self
            .call(
                Method::POST,
                &format!("/v1/users/{id}/devices"),
                Some(serde_json::json!({"platform": "fcm", "token": token})),
            )
            .await;
        assert!(s.is_success(), "{body}");
    }

    pub async fn campaign(&self, id: &str) -> serde_json::Value {
        self.call(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await
            .1
    }
}
