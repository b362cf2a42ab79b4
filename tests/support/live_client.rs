//! A test client of the inbox API's live feed and of a node's `/metrics`, shared by the suites
//! that watch sockets across role processes (`tests/distributed`, the API suite's end-to-end
//! cases).
#![allow(dead_code)]

use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long something that should happen may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// An inbox token of `user`, valid for an hour, signed with `secret`.
pub fn token(secret: &str, user: &str) -> String {
    let now = chrono::Utc::now();
    herald_core::token::mint(
        secret.as_bytes(),
        user,
        now,
        now + chrono::Duration::hours(1),
    )
}

/// A live socket of `user` on the node at `base` (`query`: `""` or `"?since=<cursor>"`),
/// retried while the node is not ready for it (it answers 503 until it follows the live hub).
pub async fn connect(secret: &str, base: &str, user: &str, query: &str) -> Ws {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut req = format!("{}/v1/inbox/live{query}", base.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token(secret, user)).parse().unwrap(),
        );
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => return ws,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "connecting {user} to {base}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The next JSON frame (pings skipped).
pub async fn next_frame(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open")
            .expect("a good frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Nothing more arrives for a moment.
pub async fn assert_quiet(ws: &mut Ws) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

/// The sum of a metric's samples on a node's `/metrics`.
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
