//! `GET /console`: the web console, a client of this admin API on the same origin (campaigns
//! with previews and live progress, users and segments with the live size of a filter,
//! templates with previews, webhooks, dead letters, analytics). Plain HTML, CSS and one
//! JavaScript module, compiled into the binary: `herald serve` and `herald api` need nothing
//! else. The files are public; everything they show comes from the API behind the admin key,
//! which the page asks for and keeps in the tab's session storage.

use axum::routing::get;
use axum::Router;
use herald_http::embedded_file;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The page talks to this origin only and runs no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// The console's files, outside the admin key check (the page asks for the key).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(embedded_file("text/html; charset=utf-8", CSP, PAGE)),
        )
        .route(
            "/console/console.js",
            get(embedded_file("text/javascript; charset=utf-8", CSP, SCRIPT)),
        )
        .route(
            "/console/console.css",
            get(embedded_file("text/css; charset=utf-8", CSP, STYLE)),
        )
}
