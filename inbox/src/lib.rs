//! Herald's inbox role (DESIGN.md flows 4–5): the merged inbox over HTTP, and (issue #5) the
//! WebSocket live feed.
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
//! - `GET /v1/inbox?limit=20&cursor=&unread_only=false` → `{"items", "next_cursor", "unread_count"}`;
//!   `limit` is 1 to 100 (default 20), a bad limit or cursor is 422; `next_cursor` is `null`
//!   on the last page;
//! - `GET /v1/inbox/unread_count` → `{"unread_count": n}`;
//! - `POST /v1/inbox/{id}/read` and `POST /v1/inbox/{id}/dismiss` → 204 No Content, for personal
//!   and broadcast items alike; 404 when the user has no such item (unknown, not a UUID,
//!   another user's, already dismissed, or a broadcast not live or not for this user);
//! - `POST /v1/inbox/read_all` → 200 `{"marked_read": n}`, the number of items that were unread.
//!
//! Every change is published on the live hub (`Read`, `Dismiss`, `ReadAll`, best effort) for
//! the user's other devices.
//!
//! The open broadcasts and user attributes are cached in process ([`cache`]): a new broadcast
//! shows at once on its activation event (else within 500 ms), a cancelled one goes within
//! 500 ms, and a change of a user's attributes shows within 5 s.
//!
//! It reads through the ports of `herald_core::Context` and shares HTTP plumbing with
//! `herald_api::http`; it never writes campaigns or talks to push providers.

pub mod auth;
pub mod cache;
pub mod cursor;
mod routes;
pub mod service;

pub use auth::InboxUser;
pub use service::{InboxItem, InboxPage, InboxService, ItemKind, PageRequest};

use axum::routing::{get, post};
use axum::Router;
use herald_core::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The inbox routes (`/v1/inbox…`), with their state (one [`InboxService`]) applied.
pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/v1/inbox", get(routes::list))
        .route("/v1/inbox/unread_count", get(routes::unread_count))
        .route("/v1/inbox/read_all", post(routes::read_all))
        .route("/v1/inbox/{id}/read", post(routes::read))
        .route("/v1/inbox/{id}/dismiss", post(routes::dismiss))
        .with_state(InboxService::new(ctx))
}

/// Runs the `inbox` role: the inbox routes and the operations endpoints on `listener` until
/// `shutdown` is cancelled.
pub async fn run(
    ctx: Context,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = herald_api::finish(router(ctx.clone()).merge(herald_api::http::ops_router(ctx)));
    herald_api::serve(listener, app, shutdown).await
}
