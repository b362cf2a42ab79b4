//! `GET /demo`: a demo inbox page built on the JS/TS inbox client (`clients/js`), served beside
//! the inbox API so it talks to it from the same origin. Open it with the user's inbox token
//! in the fragment (`/demo#token=...`, never sent to a server) or paste the token in it.
//! Both files are compiled into the binary: `herald serve` and `herald inbox` need nothing
//! else. The client's built module (`clients/js/dist/index.js`) is kept in the repository and
//! checked against its TypeScript source in CI.

use axum::routing::get;
use axum::Router;
use herald_http::embedded_file;

const PAGE: &str = include_str!("../../clients/js/demo/index.html");
const CLIENT: &str = include_str!("../../clients/js/dist/index.js");

/// The page runs its own inline module and talks to this origin only.
const CSP: &str =
    "default-src 'self'; style-src 'unsafe-inline'; script-src 'self' 'unsafe-inline'; \
                   connect-src 'self' ws: wss:";

/// The demo page and the client module it imports.
pub fn router() -> Router {
    Router::new()
        .route(
            "/demo",
            get(embedded_file("text/html; charset=utf-8", CSP, PAGE)),
        )
        .route(
            "/demo/inbox-client.js",
            get(embedded_file("text/javascript; charset=utf-8", CSP, CLIENT)),
        )
}
