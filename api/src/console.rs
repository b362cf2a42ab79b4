//! `GET /console`: the web console, a client of this admin API on the same origin (campaigns
//! with previews and live progress, users and segments with the live size of a filter,
//! templates with previews, webhooks, dead letters, analytics). Plain HTML, CSS and one
//! JavaScript module, compiled into the binary: `herald serve` and `herald api` need nothing
//! else. The files are public; everything they show comes from the API behind the admin key,
//! which the page asks for and keeps in the tab's session storage.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The page talks to this origin only and runs no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'";

fn file(
    content_type: &'static str,
    body: &'static str,
) -> impl Fn() -> std::future::Ready<axum::response::Response> + Clone {
    move || {
        std::future::ready(
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CONTENT_SECURITY_POLICY, CSP),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
                .into_response(),
        )
    }
}

/// The console's files, outside the admin key check (the page asks for the key).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(file("text/html; charset=utf-8", PAGE)))
        .route(
            "/console/console.js",
            get(file("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/console/console.css",
            get(file("text/css; charset=utf-8", STYLE)),
        )
}
