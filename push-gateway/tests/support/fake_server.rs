//! The plumbing of the fake provider APIs the suites run against: an axum app served on
//! `127.0.0.1:0`, an address nothing listens on, and a tracker of requests in flight.
//!
//! Include it with `#[path = "support/fake_server.rs"] mod fake_server;`.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

/// A listener on a free local port and its `http://` base URL, for a fake that must know its
/// own address before its app is built; hand both to [`spawn`].
pub async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    (listener, format!("http://{addr}"))
}

/// Serves `app` on `listener` (HTTP/1.1 and h2c) for the rest of the test.
pub fn spawn(listener: TcpListener, app: Router) {
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// Serves `app` on a free local port for the rest of the test; its address.
pub async fn serve(app: Router) -> SocketAddr {
    let (listener, _) = bind().await;
    let addr = listener.local_addr().expect("local addr");
    spawn(listener, app);
    addr
}

/// A local address that was free a moment ago: nothing listens there.
pub fn closed_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// Counts a fake's requests in flight and the most there ever were at once.
#[derive(Default)]
pub struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    /// One more request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(self)
    }

    /// The most requests that were in flight at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}
