//! The inbox API's part of the OpenAPI document: the operations of [`crate::router`], each
//! documented beside its handler.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::routes::list,
        crate::routes::unread_count,
        crate::routes::read,
        crate::routes::dismiss,
        crate::routes::read_all,
        crate::routes::bulk,
        crate::live::upgrade,
    ),
    tags((name = "inbox", description = "A user's inbox, with the user's inbox token"))
)]
struct InboxApi;

/// The inbox API's operations.
pub fn document() -> utoipa::openapi::OpenApi {
    InboxApi::openapi()
}
