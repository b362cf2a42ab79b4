//! The OpenAPI 3.1 document's shared parts: the error body every 4xx/5xx carries, the two
//! security schemes (the admin key, the inbox token), the operations endpoints, the error
//! responses every operation can give, and the route that serves a role's document at
//! `/openapi.json`. Each role crate documents its own operations; the binary merges the
//! documents of the roles a process serves.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, Response};
use utoipa::{OpenApi, ToSchema};

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to branch on and a message for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid`, `not_found`, `conflict`, `unavailable`, `internal`, `malformed_request`,
    /// `unauthorized`, `body_too_large`, `request_timeout`, `method_not_allowed`.
    #[schema(example = "invalid")]
    pub code: String,
    #[schema(example = "limit must be between 1 and 1000")]
    pub message: String,
}

/// `/healthz`: the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = Object,
               example = json!({"status": "ok"}))))]
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
#[allow(dead_code)]
fn openapi_doc() {}

#[derive(OpenApi)]
#[openapi(
    paths(healthz, crate::readyz, crate::metrics, openapi_doc),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct Ops;

/// The operations endpoints every role serves.
pub fn ops_document() -> Document {
    Ops::openapi()
}

/// Error answers any operation may give, on top of the ones it documents itself: the body or a
/// parameter not understood (400), no valid credentials (401), the body arriving too slowly
/// (408), too large (413), a request line too long (414), failing validation (422), a backend
/// down (503), a fault (500).
const COMMON_ERRORS: [(&str, &str); 8] = [
    (
        "400",
        "Malformed: the body is not JSON, or a path parameter is not understood",
    ),
    ("401", "No valid credentials for this API"),
    ("408", "The request body did not arrive in time"),
    (
        "413",
        "The request body is over the limit, which the message names",
    ),
    ("414", "The request line is over 16 KiB"),
    (
        "422",
        "The request is well-formed but invalid; the message names the field",
    ),
    ("500", "An unexpected fault; nothing was changed"),
    (
        "503",
        "A backend is unavailable; retry later (nothing was changed)",
    ),
];

/// The whole document of a process from its roles' parts (the operations endpoints added):
/// title and version, the security schemes and which operation takes which (the inbox token
/// for `/v1/inbox…`, the admin key for the rest of `/v1/`, none for the operations endpoints),
/// and the shared error answers added to every operation that does not document its own.
pub fn finish_document(parts: impl IntoIterator<Item = Document>) -> Document {
    let mut doc = ops_document();
    for part in parts {
        doc.merge(part);
    }
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title("Herald")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Herald's HTTP APIs: the admin API (bearer admin key), the inbox API (bearer \
             inbox token minted by `POST /v1/users/{user_id}/token`) and the operations \
             endpoints. Every 4xx and 5xx answer carries the `ErrorBody`.",
        ))
        .license(Some(utoipa::openapi::License::new("Apache-2.0")))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_key",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The admin key (`admin_key`, `HERALD_ADMIN_KEY`)"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "inbox_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A user's inbox token, minted by `POST /v1/users/{user_id}/token`",
                ))
                .build(),
        ),
    );
    let error = |description: &str| -> RefOr<Response> {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "ErrorBody",
                        ))))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let operational = !path.starts_with("/v1/");
        let scheme = if path.starts_with("/v1/inbox") {
            Some("inbox_token")
        } else if !operational {
            Some("admin_key")
        } else {
            None
        };
        for op in operations(item) {
            if let Some(scheme) = scheme {
                op.security = Some(vec![SecurityRequirement::new::<_, _, &str>(scheme, [])]);
            }
            for (status, description) in COMMON_ERRORS {
                if operational && status != "500" && status != "503" {
                    continue;
                }
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description));
            }
        }
    }
    doc
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// `GET /openapi.json`: `doc` rendered once, served without credentials.
pub fn openapi_router(doc: &Document) -> Router {
    let body = bytes::Bytes::from(doc.to_pretty_json().expect("the document is JSON"));
    Router::new().route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
        }),
    )
}
