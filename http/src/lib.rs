//! HTTP plumbing shared by every role that serves HTTP (admin API, inbox, and the operations
//! port of the worker roles): the one mapping from error kind to status and error body, the
//! JSON extractor whose rejections use that body, the admin bearer check, request metrics, the
//! operations endpoints (`/healthz`, `/readyz` with the ports and the background workers,
//! `/metrics`), and the layers and graceful serving every router shares.
//!
//! It depends on `herald-core` only: no role crate, no use case, no storage driver. Routers of
//! the roles build on it; it never names their routes.

pub mod openapi;

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRef, FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use herald_core::{Context, Error, ErrorKind};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

/// Every error an HTTP handler can return. [`ApiError::status`] is the single place where an
/// error becomes a status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] Error),
    /// The body is not JSON (or not NDJSON), or the request is malformed.
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The limit, and the message naming it.
    #[error("{1}")]
    TooLarge(u64, String),
    /// The request (its body) did not arrive in time.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    MethodNotAllowed(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Core(e) => match e.kind {
                ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Conflict => StatusCode::CONFLICT,
                ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Core(e) => e.kind.code(),
            ApiError::Malformed(_) => "malformed_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::TooLarge(..) => "body_too_large",
            ApiError::Timeout(_) => "request_timeout",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::Core(Error::not_found(what))
    }

    pub fn invalid(what: impl Into<String>) -> Self {
        ApiError::Core(Error::invalid(what))
    }

    /// 413 for a body over `limit` bytes, naming the limit.
    pub fn too_large(limit: u64) -> Self {
        ApiError::TooLarge(
            limit,
            format!("request body is larger than the {limit} bytes allowed"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Clients see the message; causes (SQL, hosts) stay in the log.
        let message = match &self {
            ApiError::Core(e) => {
                if status.is_server_error() {
                    tracing::error!(error = %e, source = ?e.source, "request failed");
                }
                e.message.clone()
            }
            other => other.to_string(),
        };
        let body = json!({"error": {"code": self.code(), "message": message}});
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose rejections are API errors: unparsable JSON is 400, JSON of the wrong shape
/// or type is 422 (with the path of the bad field), a body over the limit is 413 naming the
/// limit (`api.max_body_bytes`). The content type is not checked, so `curl -d` works as written.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    Context: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let BodyBytes(bytes) = BodyBytes::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The raw body, with the API's rejections (413 naming the limit, 400 for a body that could
/// not be read, such as a broken chunked encoding): for handlers that parse it themselves.
pub struct BodyBytes(pub Bytes);

impl<S> FromRequest<S> for BodyBytes
where
    S: Send + Sync,
    Context: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = Context::from_ref(state).config.api.max_body_bytes as u64;
        Bytes::from_request(req, state)
            .await
            .map(BodyBytes)
            .map_err(|e| bytes_rejection(e, limit))
    }
}

fn bytes_rejection(e: BytesRejection, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else if is_body_timeout(&e) {
        ApiError::Timeout(format!(
            "the request body paused for more than {} s",
            BODY_IDLE_TIMEOUT.as_secs()
        ))
    } else {
        ApiError::Malformed(format!("could not read the request body: {e}"))
    }
}

/// Whether reading a body failed because it paused past [`BODY_IDLE_TIMEOUT`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Parses one JSON object with the API's error classes (also used for NDJSON lines): text
/// that is not JSON is 400; JSON that is not an object, or an object of the wrong shape or
/// types, is 422 naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => {
            return Err(ApiError::Malformed(
                "request body is empty; JSON expected".into(),
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            // Valid JSON of another kind is well-formed but not what any endpoint takes.
            return match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(_) => Err(ApiError::invalid("the body must be a JSON object")),
                Err(e) => Err(ApiError::Malformed(format!("malformed JSON: {e}"))),
            };
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => {
            de.end()
                .map_err(|e| ApiError::Malformed(format!("malformed JSON: {e}")))?;
            Ok(value)
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            use serde_json::error::Category;
            // serde_json reports some type errors (a number where an enum name belongs) as
            // syntax errors; whether the text is JSON at all decides between 400 and 422.
            let is_json = inner.classify() == Category::Data
                || serde_json::from_slice::<serde_json::Value>(bytes).is_ok();
            if is_json {
                let at = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                Err(ApiError::invalid(format!(
                    "{at}{}",
                    strip_position(&inner.to_string())
                )))
            } else {
                Err(ApiError::Malformed(format!("malformed JSON: {inner}")))
            }
        }
    }
}

/// serde_json appends " at line 1 column 42" to data errors; the path says more.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Reads a bearer token from the `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: the admin API needs `Authorization: Bearer <admin key>`. Keys are compared as
/// SHA-256 digests in constant time, so neither content nor length leaks through timing.
pub async fn require_admin(State(ctx): State<Context>, req: Request, next: Next) -> Response {
    let Some(given) = bearer(req.headers()) else {
        return ApiError::Unauthorized("missing `Authorization: Bearer <admin key>` header".into())
            .into_response();
    };
    let want = Sha256::digest(ctx.secrets.admin_key.expose().as_bytes());
    let got = Sha256::digest(given.as_bytes());
    if bool::from(want.ct_eq(&got)) {
        next.run(req).await
    } else {
        ApiError::Unauthorized("the admin key is not valid".into()).into_response()
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .expect("static buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by an embedding program); then this
        // handle renders an empty page rather than failing the process.
        if metrics::set_global_recorder(recorder).is_ok() {
            spawn_metrics_upkeep(handle.clone(), METRICS_UPKEEP_EVERY);
        }
        // `# HELP` and `# TYPE` for every metric, whether or not it has been recorded yet.
        herald_core::metrics_catalog::describe();
        handle
    })
}

/// How often recorded histogram samples are folded into their buckets.
pub const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the recorder's histogram samples into their buckets every `every`, on a thread of its
/// own. The recorder keeps every sample it is given (a value and its time, 16 bytes) until
/// then, and otherwise only a scrape of `/metrics` drains them: a server that nobody scrapes
/// would hold one sample per HTTP request, provider send and fan-out stage for ever (a gigabyte
/// an hour of inbox reads at the loadtest's rates).
pub fn spawn_metrics_upkeep(handle: PrometheusHandle, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started: histogram samples are drained only by scrapes of /metrics");
    }
}

/// Middleware: request count and latency per route template (never per raw path, so ids do
/// not explode the label set).
pub async fn track_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // Clients may send any method token; only the standard ones become label values.
    let method = match *req.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD
        | Method::OPTIONS => req.method().as_str(),
        _ => "other",
    }
    .to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_duration_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// `/healthz`, `/readyz` and `/metrics`, without auth.
pub fn ops_router(ctx: Context) -> Router {
    // Install the recorder before the first request is counted, not at the first scrape.
    metrics_handle();
    Router::new()
        .route("/healthz", get(openapi::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format",
               content_type = "text/plain", body = String)))]
async fn metrics() -> impl IntoResponse {
    herald_core::metrics_catalog::before_scrape();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Every backend answers and no background worker keeps failing",
         body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "A backend does not answer or a worker keeps failing; the message names which",
         body = openapi::ErrorBody)))]
/// Ready when every backend answers and no background worker of this process keeps failing
/// (a worker whose last steps all failed: a store that cannot take writes, a handler that
/// panics); otherwise 503 naming what is wrong.
async fn readyz(State(ctx): State<Context>) -> Response {
    if let Err(e) = ctx.ports.ping().await {
        return ApiError::Core(e).into_response();
    }
    let failing = ctx.workers.failing();
    if failing.is_empty() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let names: Vec<String> = failing
        .iter()
        .map(|w| {
            format!(
                "{} ({} failed steps: {})",
                w.name,
                w.consecutive_failures,
                w.last_error.as_deref().unwrap_or("unknown")
            )
        })
        .collect();
    let body = json!({"error": {
        "code": "unavailable",
        "message": format!("background workers failing: {}", names.join("; ")),
    }, "workers": failing});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// How long a client may take to send a request's headers; a connection still sending them
/// then is closed (half-sent headers must not hold a connection open forever).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests may run on after shutdown begins.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);
/// How long a request body may pause between two chunks before the request fails with 408.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds the fallbacks and the shared layers to a composed router (every role's, and
/// `herald serve`'s composition of them): request metrics, tracing with secrets kept out of
/// the logged URI, the body idle timeout, and panics turned into 500s.
pub fn finish(router: Router) -> Router {
    with_fallbacks(router)
        .layer(axum::middleware::from_fn(track_requests))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            tracing::debug_span!(
                "request",
                method = %req.method(),
                uri = %redacted_uri(req.uri()),
                version = ?req.version(),
            )
        }))
        .layer(RequestBodyTimeoutLayer::new(BODY_IDLE_TIMEOUT))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::Core(Error::internal("the request failed unexpectedly")).into_response()
            },
        ))
}

/// A URI as it may be logged: the values of query parameters that carry credentials
/// (`token`, `access_token`, `key`, ...) are replaced by `REDACTED`.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    let secret = |name: &str| {
        let n = name.to_ascii_lowercase();
        n.contains("token") || n.contains("key") || n.contains("secret") || n.contains("password")
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret(name) => format!("{name}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
}

/// The longest request line (method, target, version) a connection may open with. Longer
/// ones are answered here, with the JSON error body: past 64 KiB hyper would answer 414
/// itself, with no body at all.
pub const MAX_REQUEST_LINE: usize = 16 * 1024;

/// What the start of a connection holds.
enum RequestLine {
    /// A whole request line within the limit (or an HTTP/2 preface): hyper takes over.
    Complete,
    TooLong,
    /// No whole line within [`HEADER_READ_TIMEOUT`], or the client closed.
    Stalled,
}

/// Reads the connection's first request line with `peek`, so that hyper still gets every
/// byte, and says whether it is complete, over [`MAX_REQUEST_LINE`], or not coming.
async fn first_request_line(stream: &tokio::net::TcpStream) -> RequestLine {
    let mut buf = vec![0u8; MAX_REQUEST_LINE + 2];
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    let mut seen = 0;
    loop {
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return RequestLine::Stalled;
        }
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return RequestLine::Stalled,
            Ok(n) => n,
        };
        if buf[..n].windows(2).any(|w| w == b"\r\n") {
            return RequestLine::Complete;
        }
        if n > MAX_REQUEST_LINE {
            return RequestLine::TooLong;
        }
        if n == seen {
            // Nothing new yet: the rest of the line is still on its way.
            if tokio::time::Instant::now() >= deadline {
                return RequestLine::Stalled;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen = n;
    }
}

/// Answers a request line over the limit with 414 and the JSON error body, then closes.
async fn refuse_long_request_line(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = json!({"error": {
        "code": "uri_too_long",
        "message": format!("the request line is longer than the {MAX_REQUEST_LINE} bytes allowed"),
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client is still sending before closing: closing on unread bytes
        // would reset the connection, and the client could lose the answer.
        use tokio::io::AsyncReadExt;
        let mut sink = vec![0u8; 64 * 1024];
        let mut drained = 0;
        while drained < 4 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    })
    .await;
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains in-flight requests
/// (upgraded WebSockets are the live feed's to close). HTTP/1.1 and HTTP/2; headers must
/// arrive within [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let mut stream = stream;
            match first_request_line(&stream).await {
                RequestLine::Complete => {}
                RequestLine::TooLong => return refuse_long_request_line(&mut stream).await,
                // Nothing usable within the header timeout, or the client left: close.
                RequestLine::Stalled => return,
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // In-flight requests get a while to finish; one that hangs (a backend that does not
    // answer) must not keep the process from stopping.
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            secs = SHUTDOWN_DRAIN.as_secs(),
            "requests still running at the end of the shutdown drain; stopping anyway"
        );
    }
    Ok(())
}

/// A handler serving one file compiled into the binary (the console's, the demo page's), with
/// its content type and content security policy.
pub fn embedded_file(
    content_type: &'static str,
    csp: &'static str,
    body: &'static str,
) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move || {
        std::future::ready(
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CONTENT_SECURITY_POLICY, csp),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
                .into_response(),
        )
    }
}

/// Answers unknown paths and methods with the error body instead of axum's empty responses.
pub fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
}

/// Path parameters whose rejections use the API error body.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::Malformed(format!("bad path parameter: {e}")))
    }
}

/// Query parameters whose rejections use the API error body.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for QueryParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::invalid(format!("bad query parameter: {}", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_query_strings_never_reach_the_log() {
        let uri: axum::http::Uri =
            "/v1/inbox/live?since=abc&token=eyJhbGciOi.secret.sig&Access_Token=x"
                .parse()
                .unwrap();
        let shown = redacted_uri(&uri);
        assert_eq!(
            shown,
            "/v1/inbox/live?since=abc&token=REDACTED&Access_Token=REDACTED"
        );
        assert!(!shown.contains("secret"));
        let plain: axum::http::Uri = "/v1/inbox?limit=20".parse().unwrap();
        assert_eq!(redacted_uri(&plain), "/v1/inbox?limit=20");
    }
}
