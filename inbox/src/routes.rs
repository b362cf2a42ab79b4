//! The inbox endpoints of API.md ("Inbox API"): thin handlers over [`InboxService`].

use crate::auth::InboxUser;
use crate::cursor;
use crate::service::{InboxPage, InboxService, PageRequest, DEFAULT_LIMIT, MAX_LIMIT};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herald_http::{ApiError, ApiResult, PathParams, QueryParams};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Only items older than this one: a `next_cursor` or an item's `cursor`, as given.
    cursor: Option<String>,
    /// Only unread items.
    unread_only: Option<bool>,
}

/// The body of `GET /v1/inbox/unread_count`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UnreadCount {
    pub unread_count: u64,
}

/// The body of `POST /v1/inbox/read_all`: the items that were unread.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MarkedRead {
    pub marked_read: u64,
}

/// `GET /v1/inbox?limit=20&cursor=&unread_only=false`
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox", params(ListQuery),
    responses((status = 200, description = "Newest first: personal items and the broadcasts for this user", body = InboxPage)))]
pub async fn list(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<InboxPage>> {
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )))
        }
    };
    let before = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(cursor::decode(c).ok_or_else(|| {
            ApiError::invalid("cursor is not valid: pass back a `cursor` or `next_cursor` as given")
        })?),
    };
    let page = svc
        .page(
            &user,
            PageRequest {
                before,
                limit,
                unread_only: q.unread_only.unwrap_or(false),
            },
        )
        .await?;
    Ok(Json(page))
}

/// `GET /v1/inbox/unread_count` → `{"unread_count": n}`
#[utoipa::path(get, path = "/v1/inbox/unread_count", tag = "inbox",
    responses((status = 200, body = UnreadCount)))]
pub async fn unread_count(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
) -> ApiResult<Json<Value>> {
    let n = svc.unread_count(&user).await?;
    Ok(Json(json!({ "unread_count": n })))
}

/// `POST /v1/inbox/{id}/read` → 204, or 404 if the user has no such item.
#[utoipa::path(post, path = "/v1/inbox/{id}/read", tag = "inbox", params(("id" = String, Path, description = "The item's id (a UUID)")),
    responses((status = 204, description = "Read (also when it already was); the user's other devices are told"),
              (status = 404, description = "The user has no such item", body = herald_http::openapi::ErrorBody)))]
pub async fn read(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    let id = item_id(&id)?;
    if svc.mark_read(&user, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_item(&id.to_string()))
    }
}

/// `POST /v1/inbox/{id}/dismiss` → 204, or 404 if the user has no such item (any more).
#[utoipa::path(post, path = "/v1/inbox/{id}/dismiss", tag = "inbox", params(("id" = String, Path, description = "The item's id (a UUID)")),
    responses((status = 204, description = "Dismissed: gone from every page and count"),
              (status = 404, description = "The user has no such item (any more)", body = herald_http::openapi::ErrorBody)))]
pub async fn dismiss(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    let id = item_id(&id)?;
    if svc.dismiss(&user, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_item(&id.to_string()))
    }
}

/// `POST /v1/inbox/read_all` → 200 `{"marked_read": n}` (items that were unread).
#[utoipa::path(post, path = "/v1/inbox/read_all", tag = "inbox",
    responses((status = 200, body = MarkedRead)))]
pub async fn read_all(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
) -> ApiResult<Json<Value>> {
    let n = svc.mark_all_read(&user).await?;
    Ok(Json(json!({ "marked_read": n })))
}

/// Item ids are UUIDs; anything else names no item.
fn item_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| no_such_item(raw))
}

fn no_such_item(id: &str) -> ApiError {
    let shown: String = id.chars().take(64).collect();
    ApiError::not_found(format!("no inbox item `{shown}`"))
}
