//! Slow and huge input: every limit answers with the one JSON error body naming the real
//! limit, and a client that stalls is cut off instead of holding a connection for ever.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn error_of(resp: reqwest::Response) -> (StatusCode, String, Value) {
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = resp.json().await.expect("a JSON error body");
    (status, ct, body)
}

#[tokio::test]
async fn bodies_over_a_limit_are_413_in_the_json_error_body_naming_the_limit() {
    let app = spawn(Options::default()).await;
    let big = "x".repeat(1_100_000);
    for path in ["/v1/campaigns", "/v1/segments/s", "/v1/users/u"] {
        let req = if path == "/v1/campaigns" {
            app.client.post(format!("{}{path}", app.base))
        } else {
            app.client.put(format!("{}{path}", app.base))
        };
        let resp = req
            .bearer_auth(ADMIN_KEY)
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let (status, ct, body) = error_of(resp).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        assert_eq!(body["error"]["code"], "body_too_large");
        assert_eq!(
            body["error"]["message"], "request body is larger than the 1048576 bytes allowed",
            "{path}"
        );
    }
}

#[tokio::test]
async fn an_import_line_over_the_line_limit_is_refused_at_once_whatever_the_body_size() {
    let app = spawn(Options::default()).await;
    // 64 MB without a newline: refused once the first MiB is in, not after a quadratic scan.
    let body = vec![b'a'; 64 * 1024 * 1024];
    let resp = app
        .client
        .post(format!("{}/v1/users/import", app.base))
        .bearer_auth(ADMIN_KEY)
        .body(body)
        .send()
        .await;
    // The server may answer and close before the client has sent everything.
    if let Ok(resp) = resp {
        let (status, _, body) = error_of(resp).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            body["error"]["message"],
            "line 1 is longer than the 1048576 bytes a user's line may have"
        );
    }
    // Lines within the limit still import.
    let ok = app
        .client
        .post(format!("{}/v1/users/import", app.base))
        .bearer_auth(ADMIN_KEY)
        .body("{\"id\": \"a\"}\n{\"id\": \"b\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let (_, users) = app.call(reqwest::Method::GET, "/v1/users/b", None).await;
    assert_eq!(users["id"], "b");
}

#[tokio::test]
async fn half_sent_headers_are_cut_off_and_a_stalled_body_is_answered_408() {
    let app = spawn(Options::default()).await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    let headers = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        // The server closes the connection (or answers 408) once the header timeout passes.
        tokio::time::timeout(Duration::from_secs(45), s.read_to_end(&mut buf))
            .await
            .expect("the connection is closed by the server")
            .ok();
        String::from_utf8_lossy(&buf).into_owned()
    };
    let body = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "PUT /v1/segments/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"filter\":"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(45), s.read_to_end(&mut buf))
            .await
            .expect("the server answers a stalled body")
            .ok();
        String::from_utf8_lossy(&buf).into_owned()
    };
    let (after_headers, after_body) = tokio::join!(headers, body);
    assert!(
        after_headers.is_empty() || after_headers.starts_with("HTTP/1.1 408"),
        "{after_headers}"
    );
    assert!(after_body.starts_with("HTTP/1.1 408"), "{after_body}");
    assert!(after_body.contains("\"request_timeout\""), "{after_body}");
    let (s, _) = app
        .call(reqwest::Method::GET, "/v1/segments/slow", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing stored");
}

#[tokio::test]
async fn a_request_line_over_the_limit_is_answered_414_in_the_json_error_body() {
    let app = spawn(Options::default()).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /v1/users/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n",
        "a".repeat(100_000)
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("answered and closed")
        .ok();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 414"), "{text}");
    assert!(text.contains("application/json"), "{text}");
    assert!(
        text.contains(r#""code":"uri_too_long""#) && text.contains("16384 bytes"),
        "{text}"
    );
    // An ordinary request on a new connection is served as ever.
    let ok = reqwest::get(format!("{}/healthz", app.base)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}
