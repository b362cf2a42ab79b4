//! A lean HTTP/2 client for providers that speak HTTP/2 (FCM): a fixed set of connections to
//! one origin, taken in turn, each re-established when it breaks; TLS with ALPN `h2` for
//! `https://`, prior knowledge (h2c) for `http://`.
//!
//! Why not reqwest here: at tens of thousands of sends a second, reqwest's per-request layers
//! (URL conversions, redirect and retry policies, per-request timers, extension maps) cost about
//! as much as HTTP/2 itself; driving `hyper`'s HTTP/2 connections directly measured 1.3–2× the
//! requests per second of the same client CPU. Everything else (HTTP/1.1 endpoints) stays on
//! reqwest.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{HeaderMap, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("timeout")]
    Timeout,
    #[error("connect: {0}")]
    Connect(String),
    #[error("transport: {0}")]
    Transport(String),
}

/// An answer: status, headers, body.
pub struct H2Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The certificates of a PEM file (for `ca_file` settings).
pub fn read_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM certificates: {e:?}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Connections to one origin.
pub struct H2Pool {
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    slots: Vec<tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl H2Pool {
    /// A pool of `connections` to the origin of `uri` (connected lazily). An `https://` origin
    /// must present a certificate from the public roots or from `extra_roots`.
    pub fn new(
        uri: &Uri,
        connections: usize,
        timeout: Duration,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<H2Pool, String> {
        let host = uri.host().ok_or("the URL has no host")?.to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the URL must be http:// or https://".into()),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for cert in extra_roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("extra CA certificate: {e}"))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("TLS server name: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(H2Pool {
            host,
            port,
            tls,
            slots: (0..connections.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    /// POSTs a JSON body with a bearer token; the whole exchange bounded by the timeout.
    pub async fn post_json(
        &self,
        uri: &Uri,
        bearer: &HeaderValue,
        body: Bytes,
    ) -> Result<H2Response, H2Error> {
        match tokio::time::timeout(self.timeout, self.exchange(uri, bearer, body)).await {
            Ok(r) => r,
            Err(_) => Err(H2Error::Timeout),
        }
    }

    async fn exchange(
        &self,
        uri: &Uri,
        bearer: &HeaderValue,
        body: Bytes,
    ) -> Result<H2Response, H2Error> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut sender = self.sender(slot).await?;
        let request = Request::post(uri.clone())
            .header(AUTHORIZATION, bearer.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|e| H2Error::Transport(e.to_string()))?;
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                // A broken connection is replaced on the next request through this slot.
                if sender.is_closed() {
                    *self.slots[slot].lock().await = None;
                }
                return Err(H2Error::Transport(e.to_string()));
            }
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| H2Error::Transport(e.to_string()))?
            .to_bytes();
        Ok(H2Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The slot's connection, established (once, under the slot's lock) if it has none or its
    /// connection closed.
    async fn sender(&self, slot: usize) -> Result<SendRequest<Full<Bytes>>, H2Error> {
        let mut guard = self.slots[slot].lock().await;
        if let Some(s) = guard.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let sender = self.connect().await?;
        *guard = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, H2Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| H2Error::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        match &self.tls {
            None => {
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| H2Error::Connect(e.to_string()))?;
                tokio::spawn(conn);
                Ok(sender)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| H2Error::Connect(format!("TLS: {e}")))?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(H2Error::Connect("the server does not offer HTTP/2".into()));
                }
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| H2Error::Connect(e.to_string()))?;
                tokio::spawn(conn);
                Ok(sender)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_https_origin_that_does_not_speak_tls_is_a_connect_error() {
        // A listener that accepts and hangs up: the TLS handshake must fail, not hang.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let uri: Uri = format!("https://localhost:{port}/v1/x").parse().unwrap();
        let pool = H2Pool::new(&uri, 2, Duration::from_secs(5), &[]).unwrap();
        let bearer = HeaderValue::from_static("Bearer t");
        match pool
            .post_json(&uri, &bearer, Bytes::from_static(b"{}"))
            .await
        {
            Err(H2Error::Connect(why)) => assert!(why.starts_with("TLS"), "{why}"),
            Err(other) => panic!("expected a TLS connect error, got {other}"),
            Ok(r) => panic!("expected an error, got {}", r.status),
        }
    }

    #[test]
    fn only_http_and_https_origins_are_accepted() {
        let t = Duration::from_secs(1);
        assert!(H2Pool::new(&"ftp://example.com/x".parse().unwrap(), 1, t, &[]).is_err());
        assert!(H2Pool::new(&"/relative".parse().unwrap(), 1, t, &[]).is_err());
        assert!(H2Pool::new(&"https://fcm.googleapis.com/v1".parse().unwrap(), 1, t, &[]).is_ok());
        assert!(H2Pool::new(&"http://127.0.0.1:9/v1".parse().unwrap(), 1, t, &[]).is_ok());
    }
}
