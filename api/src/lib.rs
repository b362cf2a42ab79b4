//! Herald's admin REST API: users and their preferences and devices, segments, templates, inbox
//! token minting, campaigns and event rules, webhook subscriptions and dead letters, delivery
//! analytics and the health status; and the web console on them (`/console`, [`console`]).
//!
//! Handlers parse and check input, call a use case (`herald-usecases`) or a port of
//! `herald_core::Context`, and shape the answer; they hold no state of their own and never
//! touch a database driver. The HTTP plumbing they share with the other roles is
//! `herald-http`. Fan-out, inbox reads and deliveries belong to the other role crates.

mod analytics;
mod campaigns;
mod cloudevents;
pub mod console;
mod deliveries;
mod import;
pub mod openapi;
pub mod pages;
mod rules;
mod segments;
mod templates;
mod users;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use herald_core::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The shared plumbing, under the name the handlers use.
pub(crate) use herald_http as http;
use herald_http::{finish, serve};

/// One NDJSON line of `POST /v1/users/import` as the import reads it: the user, or the error
/// the line would be answered with (what the fuzz target of the import reader drives).
pub fn parse_import_line(
    line: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<herald_core::model::User, herald_http::ApiError> {
    import::parse_user(line, now)
}

/// The admin routes (`/v1/users…`, `/v1/segments…`, `/v1/templates…`), behind the admin key.
pub fn admin_router(ctx: Context) -> Router {
    let max_body = ctx.config.api.max_body_bytes;
    let import = Router::new()
        .route("/v1/users/import", post(import::import_users))
        .route("/v1/devices/import", post(import::import_devices))
        // The imports stream their bodies and enforce `api.max_import_bytes` themselves.
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route(
            "/v1/users/{user_id}",
            put(users::put_user)
                .get(users::get_user)
                .delete(users::delete_user),
        )
        .route(
            "/v1/users/{user_id}/preferences",
            put(users::put_preferences).get(users::get_preferences),
        )
        .route(
            "/v1/users/{user_id}/devices",
            post(users::add_device).get(users::list_devices),
        )
        .route(
            "/v1/users/{user_id}/devices/{token}",
            delete(users::delete_device),
        )
        .route("/v1/users/{user_id}/token", post(users::mint_token))
        .route(
            "/v1/campaigns",
            post(campaigns::create).get(campaigns::list),
        )
        .route("/v1/campaigns/{id}", get(campaigns::get))
        .route("/v1/campaigns/{id}/cancel", post(campaigns::cancel))
        .route(
            "/v1/campaigns/{id}/notifications",
            axum::routing::delete(campaigns::retract),
        )
        .route(
            "/v1/campaigns/{id}/content",
            axum::routing::patch(campaigns::revise),
        )
        .route(
            "/v1/campaigns/{id}/recipients/{user_id}",
            get(campaigns::recipient),
        )
        .route(
            "/v1/campaigns/{id}/failed-batches",
            get(campaigns::failed_batches),
        )
        .route(
            "/v1/campaigns/{id}/failed-batches/{batch_no}/replay",
            post(campaigns::replay_failed_batch),
        )
        .route("/v1/rules", get(rules::list))
        .route(
            "/v1/rules/{event_type}",
            put(rules::put).get(rules::get).delete(rules::delete),
        )
        .route("/v1/events", post(rules::event))
        .route("/v1/segments", get(segments::list))
        .route("/v1/previews/segment", post(segments::preview))
        .route(
            "/v1/segments/{name}",
            put(segments::put)
                .get(segments::get)
                .delete(segments::delete),
        )
        .route("/v1/webhooks", get(deliveries::list_webhooks))
        .route(
            "/v1/webhooks/{id}",
            put(deliveries::put_webhook)
                .get(deliveries::get_webhook)
                .delete(deliveries::delete_webhook),
        )
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(deliveries::rotate_webhook_secret),
        )
        .route("/v1/dead-letters", get(deliveries::list_dead_letters))
        .route(
            "/v1/dead-letters/{id}/replay",
            post(deliveries::replay_dead_letter),
        )
        .route("/v1/analytics/summary", get(analytics::summary))
        .route("/v1/analytics/channels/{channel}", get(analytics::channel))
        .route("/v1/health/status", get(analytics::health))
        .route("/v1/templates", get(templates::list))
        .route("/v1/previews/template", post(templates::preview))
        .route(
            "/v1/templates/{template_id}",
            put(templates::put)
                .get(templates::get)
                .delete(templates::delete),
        )
        .layer(DefaultBodyLimit::max(max_body))
        // The lag samples earlier health checks of this process took (for the trends).
        .layer(axum::Extension(std::sync::Arc::new(
            herald_usecases::analytics::LagHistory::default(),
        )))
        .merge(import)
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            http::require_admin,
        ))
        // After the admin check's layer, so outside it: the console asks for the key itself.
        .merge(console::router())
        .with_state(ctx)
}

/// The full HTTP surface of the `api` role: admin routes, operations endpoints, fallbacks
/// and the layers every request goes through.
pub fn router(ctx: Context) -> Router {
    let doc = http::openapi::finish_document([openapi::document()]);
    finish(
        admin_router(ctx.clone())
            .merge(http::ops_router(ctx))
            .merge(http::openapi::openapi_router(&doc)),
    )
}

/// Runs the `api` role: the admin API on `listener` until `shutdown`.
pub async fn run(
    ctx: Context,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve(listener, router(ctx), shutdown).await
}
