//! A lean HTTP/2 client for providers that speak HTTP/2 (FCM): a fixed set of connections to
//! one origin, taken in turn, each re-established when it breaks; TLS with ALPN `h2` for
//! `https://`, prior knowledge (h2c) for `http://`.
//!
//! Why the `h2` crate directly: at tens of thousands of sends a second, the layers above
//! HTTP/2 cost about as much as HTTP/2 itself. reqwest's (URL conversions, redirect and retry
//! policies, per-request timers) measured 1.3–2× the client CPU of `hyper`'s connections, and
//! `hyper`'s connections in turn pass every request through a channel to the connection's
//! task, spawn a task per request to stream its body, and hand the answer back through another
//! channel. Here the sender opens the stream, queues its one body frame and reads the answer
//! in its own task; only the socket's reads and writes run in the connection's task.
//! Everything else (HTTP/1.1 endpoints) stays on reqwest.

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The largest answer read; a provider's answers are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// How often a connection is pinged, and how long the pong may take before the connection is
/// taken for dead (a peer gone without a FIN would otherwise hold every send until its
/// timeout).
const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_WITHIN: Duration = Duration::from_secs(20);

/// Times one request is sent again after it went unprocessed (its stream refused or above a
/// GOAWAY's last, or its connection going away before the stream opened).
const MAX_UNPROCESSED: u32 = 5;

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

/// How one attempt failed: unprocessed for sure (sent again), or anything else.
enum Failure {
    /// The server cannot have acted on the request: it refused the stream, its GOAWAY left the
    /// stream out, or the stream never opened because the connection was going away or broken.
    Unprocessed(String),
    Other(H2Error),
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

/// One established connection: the handle that opens streams on it, and whether its task is
/// still running (cleared when the connection ends, fails or stops answering pings).
#[derive(Clone)]
struct Live {
    sender: SendRequest<Bytes>,
    alive: Arc<AtomicBool>,
}

impl Live {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// Connections to one origin.
pub struct H2Pool {
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    /// Each slot's connection; a plain lock, never held across an await.
    slots: Vec<parking_lot::Mutex<Option<Live>>>,
    /// Held while a slot connects, so the senders that find it empty wait for one handshake
    /// instead of each making their own.
    connecting: Vec<tokio::sync::Mutex<()>>,
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
        let connections = connections.max(1);
        Ok(H2Pool {
            host,
            port,
            tls,
            slots: (0..connections)
                .map(|_| parking_lot::Mutex::new(None))
                .collect(),
            connecting: (0..connections)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    /// POSTs a JSON body with a bearer token; the whole exchange bounded by the timeout.
    /// Dropping the future (or the timeout) resets the request's stream.
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

    /// One request, sent again when it went unprocessed: a refused stream was not processed
    /// at all (RFC 9113 §8.7), and a new connection's first burst can outrun the server's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`, which the client learns only once the server's
    /// settings arrive; a request whose stream never opened, because the server had begun to
    /// close the connection (GOAWAY, as servers do to rotate long-lived connections) or the
    /// connection had broken, never left this process and goes out on a new connection.
    async fn exchange(
        &self,
        uri: &Uri,
        bearer: &HeaderValue,
        body: Bytes,
    ) -> Result<H2Response, H2Error> {
        let mut unprocessed = 0;
        loop {
            match self.attempt(uri, bearer, body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Unprocessed(why)) if unprocessed < MAX_UNPROCESSED => {
                    unprocessed += 1;
                    tracing::debug!(%why, unprocessed, "HTTP/2 request unprocessed; sending again");
                    tokio::time::sleep(Duration::from_millis(10 << unprocessed)).await;
                }
                Err(Failure::Unprocessed(why)) => return Err(H2Error::Transport(why)),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }

    async fn attempt(
        &self,
        uri: &Uri,
        bearer: &HeaderValue,
        body: Bytes,
    ) -> Result<H2Response, Failure> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let Live { sender, alive } = self.sender(slot).await.map_err(Failure::Other)?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, bearer.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // A broken connection is replaced on the next request through this slot.
        let broken = |e: h2::Error| {
            if e.is_io() || e.is_go_away() {
                alive.store(false, Ordering::Release);
            }
            // A refused stream was not processed; nor was one the peer's GOAWAY fails: h2
            // fails with it only the streams above the last one the GOAWAY says the server
            // processed (RFC 9113 §6.8), the others finish or fail with the connection.
            if e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote()) {
                Failure::Unprocessed(e.to_string())
            } else {
                Failure::Other(H2Error::Transport(e.to_string()))
            }
        };
        // Each sender opens streams through its own handle: `ready` then only waits when the
        // connection itself cannot open more (the provider's permits bound what is in flight).
        // Until `send_request` succeeds no frame of this request is queued: a failure here
        // (the connection going away or broken, or out of stream ids) leaves it unsent, to go
        // out on a new connection; this one opens no more streams for the slot.
        let unsent = |e: h2::Error| {
            alive.store(false, Ordering::Release);
            Failure::Unprocessed(e.to_string())
        };
        let mut sender = sender.ready().await.map_err(unsent)?;
        let (answer, mut stream) = sender.send_request(request, false).map_err(unsent)?;
        // Queued whole: h2 writes it as the peer's window allows. If the stream closed between
        // its opening and this, h2 says only "inactive stream"; the answer says why. The peer
        // reset it (most often refused, when a new connection's first burst outruns its
        // stream limit: sent again rather than failed), the connection ended, or the peer
        // answered whole before reading the body and reset the stream with NO_ERROR to say it
        // needs no more of it: that answer stands (RFC 9113 §8.1), and h2 ends its body
        // cleanly, the reset having come after the answer's end.
        let _ = stream.send_data(body, true);
        let answer = answer.await.map_err(broken)?;
        let (parts, mut recv) = answer.into_parts();
        // An answer in one DATA frame (the usual case) is kept as that frame; a longer one is
        // joined as its frames arrive.
        let mut only: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(broken)?;
            // Reading the answer gives its bytes back to the connection's receive window.
            let _ = recv.flow_control().release_capacity(chunk.len());
            if only.as_ref().map_or(0, Bytes::len) + joined.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Failure::Other(H2Error::Transport(format!(
                    "answer larger than {MAX_ANSWER_BYTES} bytes"
                ))));
            }
            match only.take() {
                None if joined.is_empty() => only = Some(chunk),
                first => {
                    joined.extend_from_slice(first.as_deref().unwrap_or_default());
                    joined.extend_from_slice(&chunk);
                }
            }
        }
        let body = only.unwrap_or_else(|| joined.freeze());
        Ok(H2Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The slot's connection, established (once, while holding the slot's connect lock) if it
    /// has none or its connection ended.
    async fn sender(&self, slot: usize) -> Result<Live, H2Error> {
        if let Some(live) = self.live(slot) {
            return Ok(live);
        }
        let _connecting = self.connecting[slot].lock().await;
        if let Some(live) = self.live(slot) {
            return Ok(live);
        }
        let live = self.connect().await?;
        *self.slots[slot].lock() = Some(live.clone());
        Ok(live)
    }

    /// The slot's connection, if it has one still running.
    fn live(&self, slot: usize) -> Option<Live> {
        self.slots[slot]
            .lock()
            .as_ref()
            .filter(|l| l.is_alive())
            .cloned()
    }

    async fn connect(&self) -> Result<Live, H2Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| H2Error::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| H2Error::Connect(format!("TLS: {e}")))?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(H2Error::Connect("the server does not offer HTTP/2".into()));
                }
                handshake(tls).await
            }
        }
    }
}

/// The HTTP/2 handshake on an open transport; the connection then runs in a task of its own,
/// pinged every [`PING_EVERY`], and the returned handle reads dead once that task ends.
async fn handshake<T>(io: T) -> Result<Live, H2Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::Builder::new()
        // Answers are small and read at once: windows wide enough that thousands of them in
        // flight never wait on a WINDOW_UPDATE.
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| H2Error::Connect(e.to_string()))?;
    let alive = Arc::new(AtomicBool::new(true));
    let ping = connection.ping_pong();
    let driver = tokio::spawn({
        let alive = alive.clone();
        async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
            }
            alive.store(false, Ordering::Release);
        }
    });
    if let Some(mut ping) = ping {
        let alive = alive.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PING_EVERY).await;
                if !alive.load(Ordering::Acquire) {
                    return;
                }
                let pong = tokio::time::timeout(PONG_WITHIN, ping.ping(h2::Ping::opaque())).await;
                if !matches!(pong, Ok(Ok(_))) {
                    // Dropping the connection fails its streams at once, and the slot
                    // reconnects on its next request.
                    tracing::warn!("an HTTP/2 connection did not answer a ping; reconnecting");
                    alive.store(false, Ordering::Release);
                    driver.abort();
                    return;
                }
            }
        });
    }
    Ok(Live { sender, alive })
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
    /// An h2c server on a free port that allows `max_streams` streams per connection and
    /// answers each request by its body: `slow` after 5 s, `pause` after 1 s, `big` with
    /// 2 MiB, `medium` with 100,000 numbered bytes (several DATA frames), anything else
    /// echoed after 10 ms; a request to `/v1/early` is answered `early` at once, its body
    /// unread; one to `/v1/goaway` is answered `bye` and its connection then closed
    /// gracefully (GOAWAY). Counts the connections it accepted.
    async fn h2c_server(max_streams: u32) -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::Builder::new()
                        .max_concurrent_streams(max_streams)
                        .handshake::<_, Bytes>(socket)
                        .await
                        .unwrap();
                    while let Some(Ok((request, respond))) = conn.accept().await {
                        if request.uri().path() == "/v1/goaway" {
                            // Answered, then the connection begins to close (GOAWAY): the
                            // streams already open finish, no new one is accepted.
                            answer(respond, Bytes::from_static(b"bye"));
                            conn.graceful_shutdown();
                            continue;
                        }
                        tokio::spawn(async move {
                            if request.uri().path() == "/v1/early" {
                                // Answered whole before the body is read; dropping the body
                                // then resets the stream with NO_ERROR (RFC 9113 §8.1).
                                answer(respond, Bytes::from_static(b"early"));
                                return;
                            }
                            let mut body = request.into_body();
                            let mut read = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                read.extend_from_slice(&chunk);
                            }
                            let body_of_answer = match read.as_slice() {
                                b"slow" => {
                                    tokio::time::sleep(Duration::from_secs(5)).await;
                                    Bytes::from_static(b"late")
                                }
                                b"pause" => {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    Bytes::from_static(b"paused")
                                }
                                b"big" => Bytes::from(vec![b'x'; 2 << 20]),
                                b"medium" => (0..100_000u32).map(|i| (i % 251) as u8).collect(),
                                _ => {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    Bytes::from(read)
                                }
                            };
                            answer(respond, body_of_answer);
                        });
                    }
                });
            }
        });
        let uri = format!("http://127.0.0.1:{port}/v1/send").parse().unwrap();
        (uri, connections)
    }

    /// Answers a stream 200 with `body`, whole.
    fn answer(mut respond: h2::server::SendResponse<Bytes>, body: Bytes) {
        if let Ok(mut send) = respond.send_response(http::Response::new(()), false) {
            let _ = send.send_data(body, true);
        }
    }

    /// `uri` with its path replaced (the test servers' routes).
    fn at(uri: &Uri, path: &str) -> Uri {
        uri.to_string().replace("/v1/send", path).parse().unwrap()
    }

    fn bearer() -> HeaderValue {
        HeaderValue::from_static("Bearer t")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_requests_than_the_peer_allows_at_once_wait_for_a_free_stream() {
        let (uri, connections) = h2c_server(4).await;
        let pool = Arc::new(H2Pool::new(&uri, 1, Duration::from_secs(10), &[]).unwrap());
        let sends = (0..100).map(|i| {
            let (pool, uri) = (pool.clone(), uri.clone());
            tokio::spawn(async move {
                let body = Bytes::from(format!("send-{i}"));
                let answer = pool.post_json(&uri, &bearer(), body.clone()).await.unwrap();
                assert_eq!(answer.status, StatusCode::OK);
                assert_eq!(answer.body, body);
            })
        });
        for send in futures::future::join_all(sends).await {
            send.unwrap();
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_refused_in_a_new_connections_first_burst_are_all_sent_again() {
        // Before the server's settings arrive the client opens as many streams as it is asked
        // to; the server refuses those past its limit, and a refusal can land between a
        // stream's opening and the queueing of its body. Every round's connection is new, so
        // every round has such a burst.
        let (uri, connections) = h2c_server(2).await;
        bursts_over_fresh_connections(&uri, |sent| sent.clone()).await;
        assert_eq!(connections.load(Ordering::SeqCst), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_sent_before_the_request_body_was_read_is_taken() {
        // A server may answer before it has read the whole request and then reset the stream
        // with NO_ERROR to say it needs no more of it; the client must keep the answer (RFC
        // 9113 §8.1). The answer and the reset can land before the body is queued (h2 then
        // refuses the body); fresh connections' bursts make that likely.
        let (uri, _) = h2c_server(100).await;
        bursts_over_fresh_connections(&at(&uri, "/v1/early"), |_| Bytes::from_static(b"early"))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_made_while_the_connection_goes_away_is_sent_on_a_new_one() {
        let (uri, connections) = h2c_server(100).await;
        let pool = Arc::new(H2Pool::new(&uri, 1, Duration::from_secs(10), &[]).unwrap());
        // A stream in flight keeps the connection open while it goes away.
        let paused = tokio::spawn({
            let (pool, uri) = (pool.clone(), uri.clone());
            async move {
                pool.post_json(&uri, &bearer(), Bytes::from_static(b"pause"))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bye = pool
            .post_json(&at(&uri, "/v1/goaway"), &bearer(), Bytes::from_static(b"-"))
            .await
            .unwrap();
        assert_eq!(bye.body, Bytes::from_static(b"bye"));
        // The GOAWAY has (most likely) arrived; the connection still serves its paused stream,
        // so it looks alive, but opens no new stream: the next request must go out on a new
        // connection. (Should it reach the server before the client has read the GOAWAY, the
        // server takes it on the old connection: answered all the same.)
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = pool
            .post_json(&uri, &bearer(), Bytes::from_static(b"next"))
            .await
            .unwrap_or_else(|e| panic!("a request made during a GOAWAY failed: {e}"));
        assert_eq!(next.body, Bytes::from_static(b"next"));
        assert!((1..=2).contains(&connections.load(Ordering::SeqCst)));
        // The stream the GOAWAY let finish was answered on the old connection.
        let paused = paused.await.unwrap().unwrap();
        assert_eq!(paused.body, Bytes::from_static(b"paused"));
    }

    /// A server speaking raw HTTP/2 frames that answers the first stream of each connection
    /// (`one`) and meets any later stream with a GOAWAY whose last stream is the first, as a
    /// server does when it starts closing just as a stream arrives. Counts connections.
    async fn first_stream_then_goaway_server() -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(first_stream_then_goaway(socket));
            }
        });
        let uri = format!("http://127.0.0.1:{port}/v1/send").parse().unwrap();
        (uri, connections)
    }

    /// One connection of [`first_stream_then_goaway_server`], until the client goes.
    async fn first_stream_then_goaway(mut socket: TcpStream) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([kind, flags]);
            f.extend(stream.to_be_bytes());
            f.extend(payload);
            f
        }
        let mut preface = [0u8; 24];
        socket.read_exact(&mut preface).await?;
        socket.write_all(&frame(4, 0, 0, &[])).await?; // SETTINGS
        let mut first = None;
        loop {
            let mut head = [0u8; 9];
            socket.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & !(1 << 31);
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).await?;
            match kind {
                4 if flags & 1 == 0 => socket.write_all(&frame(4, 1, 0, &[])).await?,
                1 if first.is_none() => {
                    first = Some(stream);
                    // `:status: 200` (HPACK static index 8), then the body.
                    socket.write_all(&frame(1, 4, stream, &[0x88])).await?;
                    socket.write_all(&frame(0, 1, stream, b"one")).await?;
                }
                1 => {
                    let mut away = first.unwrap().to_be_bytes().to_vec();
                    away.extend(0u32.to_be_bytes()); // NO_ERROR
                    socket.write_all(&frame(7, 0, 0, &away)).await?;
                }
                _ => {}
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_a_goaway_leaves_out_is_sent_again_on_a_new_connection() {
        let (uri, connections) = first_stream_then_goaway_server().await;
        let pool = H2Pool::new(&uri, 1, Duration::from_secs(10), &[]).unwrap();
        for i in 0..3 {
            let answer = pool
                .post_json(&uri, &bearer(), Bytes::from_static(b"{}"))
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.body, Bytes::from_static(b"one"));
        }
        // Each request after the first was left out by a GOAWAY and went out again, once, on
        // a connection of its own.
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    /// Eight rounds, each a new pool (so a new connection) sending a burst of 40 requests at
    /// once; every request must be answered 200 with the body `expected` makes of what it sent.
    async fn bursts_over_fresh_connections(uri: &Uri, expected: fn(&Bytes) -> Bytes) {
        for round in 0..8 {
            let pool = Arc::new(H2Pool::new(uri, 1, Duration::from_secs(10), &[]).unwrap());
            let sends = (0..40).map(|i| {
                let (pool, uri) = (pool.clone(), uri.clone());
                tokio::spawn(async move {
                    let body = Bytes::from(format!("round-{round}-send-{i}"));
                    let answer = pool.post_json(&uri, &bearer(), body.clone()).await;
                    let answer = answer.unwrap_or_else(|e| panic!("{body:?}: {e}"));
                    assert_eq!(answer.status, StatusCode::OK);
                    assert_eq!(answer.body, expected(&body));
                })
            });
            for send in futures::future::join_all(sends).await {
                send.unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_past_its_timeout_is_given_up_and_the_connection_keeps_serving() {
        let (uri, connections) = h2c_server(100).await;
        let pool = H2Pool::new(&uri, 1, Duration::from_millis(300), &[]).unwrap();
        let slow = pool
            .post_json(&uri, &bearer(), Bytes::from_static(b"slow"))
            .await;
        assert!(matches!(slow, Err(H2Error::Timeout)), "{:?}", slow.err());
        let next = pool
            .post_json(&uri, &bearer(), Bytes::from_static(b"next"))
            .await
            .unwrap();
        assert_eq!(next.body, Bytes::from_static(b"next"));
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_over_a_megabyte_is_refused_rather_than_read() {
        let (uri, _) = h2c_server(100).await;
        let pool = H2Pool::new(&uri, 1, Duration::from_secs(10), &[]).unwrap();
        match pool
            .post_json(&uri, &bearer(), Bytes::from_static(b"big"))
            .await
        {
            Err(H2Error::Transport(why)) => assert!(why.contains("larger than"), "{why}"),
            Err(other) => panic!("expected a transport error, got {other}"),
            Ok(r) => panic!(
                "expected an error, got {} with {} bytes",
                r.status,
                r.body.len()
            ),
        }
        // The connection still serves the next request.
        let next = pool
            .post_json(&uri, &bearer(), Bytes::from_static(b"ok"))
            .await
            .unwrap();
        assert_eq!(next.body, Bytes::from_static(b"ok"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_of_several_frames_is_read_whole_and_in_order() {
        let (uri, _) = h2c_server(100).await;
        let pool = H2Pool::new(&uri, 1, Duration::from_secs(10), &[]).unwrap();
        let answer = pool
            .post_json(&uri, &bearer(), Bytes::from_static(b"medium"))
            .await
            .unwrap();
        let expected: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(answer.body.len(), expected.len());
        assert!(
            answer.body == expected,
            "the frames were joined out of order"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_spread_over_the_pools_connections() {
        let (uri, connections) = h2c_server(100).await;
        let pool = H2Pool::new(&uri, 3, Duration::from_secs(10), &[]).unwrap();
        for i in 0..9 {
            let body = Bytes::from(format!("r{i}"));
            let answer = pool.post_json(&uri, &bearer(), body.clone()).await.unwrap();
            assert_eq!(answer.body, body);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }
}
