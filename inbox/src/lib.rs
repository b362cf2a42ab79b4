//! Herald's inbox role (DESIGN.md flows 4–5): the merged inbox over HTTP, and the WebSocket
//! live feed ([`live`], `GET /v1/inbox/live`).
//!
//! An inbox read merges the user's personal rows (one keyset range read on the inbox store)
//! with the live broadcasts whose segment filter matches the user's attributes, minus the ones
//! the user dismissed (one lookup of the user's broadcast states), newest first by
//! `(created_at, id)`; a broadcast sits at its `starts_at`. Pages are addressed by an opaque
//! keyset cursor ([`cursor`]) meaning "strictly older than this item", so new items arriving
//! between page reads never shift a page: nothing is skipped or repeated.
//!
//! Endpoints (API.md, "Inbox API"), all authenticated by an inbox token ([`auth`]) whose user
//! is the only one whose items they can see or change (another user's id is a 404):
//! - `GET /v1/inbox?limit=20&cursor=&status=all&archived=exclude` → `{"items", "next_cursor",
//!   "unread_count", "unseen_count"}`; `limit` is 1 to 100 (default 20), `status` is `all`,
//!   `unread` or `unseen`, `archived` is `exclude`, `include` or `only`; a bad value or cursor
//!   is 422; `next_cursor` is `null` on the last page; items carry `read_at`, `seen_at` and
//!   `archived_at`;
//! - `GET /v1/inbox/unread_count` → `{"unread_count": n, "unseen_count": m}`;
//! - `POST /v1/inbox/bulk` `{"action": "seen|read|archive|unarchive", "ids" | "before" | "all"}`
//!   → 200 `{"updated": n, "not_found": [...]}`, personal and broadcast items alike;
//! - `POST /v1/inbox/{id}/read` and `POST /v1/inbox/{id}/dismiss` → 204 No Content, for personal
//!   and broadcast items alike; 404 when the user has no such item (unknown, not a UUID,
//!   another user's, already dismissed, or a broadcast not live or not for this user);
//! - `POST /v1/inbox/read_all` → 200 `{"marked_read": n}`, the number of items that were unread;
//! - `GET /v1/inbox/live?since=<cursor>` → WebSocket: new notifications, activated broadcasts
//!   and read-state changes as JSON frames, with a gap-free resume after `since` ([`live`]).
//!
//! Every change is published on the live hub (`Read`, `Dismiss`, `ReadAll`, `Marked`, best
//! effort) for
//! the user's other devices. Each router holds ONE subscription to the live hub for all its
//! sockets ([`hub`]), whatever their number.
//!
//! The open broadcasts and user attributes are cached in process ([`cache`]): a new broadcast
//! shows at once on its activation event (else within 500 ms), a cancelled one goes within
//! 500 ms, and a change of a user's attributes shows within 5 s.
//!
//! `GET /demo` serves a demo inbox page on the JS/TS inbox client of `clients/js` ([`demo`]).
//!
//! It reads through the ports of `herald_core::Context` and shares HTTP plumbing with
//! every other role through `herald-http`; it never writes campaigns or talks to push providers.

pub mod auth;
pub mod cache;
pub mod cursor;
pub mod demo;
mod hub;
pub mod live;
pub mod openapi;
mod routes;
pub mod service;
mod subscription;

pub use auth::InboxUser;
pub use live::{LiveConfig, LiveFeed};
pub use service::{InboxItem, InboxPage, InboxService, ItemKind, PageRequest};

use axum::routing::{get, post};
use axum::Router;
use herald_core::Context;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long [`run`] waits, once the server stopped, for the live sockets to close.
pub const LIVE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The inbox routes (`/v1/inbox…`, the live feed included) with the default [`LiveConfig`].
///
/// Its live sockets are never told the server is going away: a caller with a shutdown signal
/// uses [`router_with_shutdown`] instead, so they are closed with 1001 on shutdown.
pub fn router(ctx: Context) -> Router {
    router_with(ctx, LiveConfig::default())
}

/// [`router`] with another live-feed configuration (tests use small ones).
pub fn router_with(ctx: Context, live: LiveConfig) -> Router {
    router_with_shutdown(ctx, live, CancellationToken::new())
}

/// The inbox routes with their state applied; the live sockets are closed with 1001
/// "going away" when `shutdown` is cancelled, and new ones are refused from then on.
pub fn router_with_shutdown(ctx: Context, live: LiveConfig, shutdown: CancellationToken) -> Router {
    router_with_feed(ctx, live, shutdown).0
}

/// [`router_with_shutdown`], also handing back the [`LiveFeed`] behind it, whose
/// [`LiveFeed::drained`] lets a caller wait for the sockets' close frames after the server
/// stopped (upgraded sockets are not drained by the HTTP server's graceful shutdown).
pub fn router_with_feed(
    ctx: Context,
    live: LiveConfig,
    shutdown: CancellationToken,
) -> (Router, LiveFeed) {
    let svc = InboxService::new(ctx);
    let feed = LiveFeed::new(svc.clone(), live, shutdown);
    let router = Router::new()
        .route("/v1/inbox", get(routes::list))
        .route("/v1/inbox/unread_count", get(routes::unread_count))
        .route("/v1/inbox/read_all", post(routes::read_all))
        .route("/v1/inbox/bulk", post(routes::bulk))
        .route("/v1/inbox/{id}/read", post(routes::read))
        .route("/v1/inbox/{id}/dismiss", post(routes::dismiss))
        .with_state(svc)
        .merge(
            Router::new()
                .route("/v1/inbox/live", get(live::upgrade))
                .with_state(feed.clone()),
        )
        .merge(demo::router());
    (router, feed)
}

/// Runs the `inbox` role: the inbox routes and the operations endpoints on `listener` until
/// `shutdown` is cancelled; then the live sockets are closed with 1001 and given up to
/// [`LIVE_DRAIN_TIMEOUT`] to go.
pub async fn run(
    ctx: Context,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_with(ctx, LiveConfig::default(), listener, shutdown).await
}

/// [`run`] with another live-feed configuration.
pub async fn run_with(
    ctx: Context,
    live: LiveConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (routes, feed) = router_with_feed(ctx.clone(), live, shutdown.clone());
    let doc = herald_http::openapi::finish_document([openapi::document()]);
    let app = herald_http::finish(
        routes
            .merge(herald_http::ops_router(ctx))
            .merge(herald_http::openapi::openapi_router(&doc)),
    );
    let served = herald_http::serve(listener, app, shutdown).await;
    // Upgraded sockets are not the HTTP server's to drain: let them send their close frames.
    feed.drained(LIVE_DRAIN_TIMEOUT).await;
    served
}
