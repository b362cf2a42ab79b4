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

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    unread_only: Option<bool>,
}

/// `GET /v1/inbox?limit=20&cursor=&unread_only=false`
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
pub async fn unread_count(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
) -> ApiResult<Json<Value>> {
    let n = svc.unread_count(&user).await?;
    Ok(Json(json!({ "unread_count": n })))
}

/// `POST /v1/inbox/{id}/read` → 204, or 404 if the user has no such item.
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
