//! The inbox endpoints of API.md ("Inbox API"): thin handlers over [`InboxService`].

use crate::auth::InboxUser;
use crate::cursor;
use crate::service::{
    BulkOutcome, BulkScope, InboxPage, InboxService, PageRequest, DEFAULT_LIMIT, MAX_LIMIT,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herald_core::model::{ArchivedFilter, InboxAction, InboxFilter, StatusFilter};
use herald_core::ports::MAX_BULK;
use herald_http::{ApiError, ApiResult, JsonBody, PathParams, QueryParams};
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
    /// Which items by read state: `all` (default), `unread`, or `unseen` (neither seen nor
    /// read).
    status: Option<StatusFilter>,
    /// Archived items: `exclude` (default), `include`, or `only`.
    archived: Option<ArchivedFilter>,
    /// Only unread items: the same as `status=unread`.
    unread_only: Option<bool>,
}

/// The body of `GET /v1/inbox/unread_count`: the badge counts (archived items left out).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UnreadCount {
    pub unread_count: u64,
    pub unseen_count: u64,
}

/// The body of `POST /v1/inbox/bulk`: an action and exactly one of `ids`, `before` or `all`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `seen`, `read` (marks seen too), `archive` or `unarchive`.
    pub action: InboxAction,
    /// These items (1 to 100 ids), personal or broadcast.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Every item strictly older than this one: an item's `cursor` or a `next_cursor`.
    #[serde(default)]
    pub before: Option<String>,
    /// Every item there is now (`true`). For `seen` and `read`, personal items that arrive
    /// later with an earlier time are covered too (broadcasts: the ones showing now).
    #[serde(default)]
    pub all: Option<bool>,
}

/// The body of `POST /v1/inbox/read_all`: the items that were unread.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MarkedRead {
    pub marked_read: u64,
}

/// `GET /v1/inbox?limit=20&cursor=&status=all&archived=exclude`
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox", params(ListQuery),
    responses((status = 200, description = "Newest first: personal items and the broadcasts for this user that pass the filter", body = InboxPage),
              (status = 422, description = "A bad limit, cursor, status or archived value", body = herald_http::openapi::ErrorBody)))]
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
    let status = match (q.status, q.unread_only) {
        (status, None | Some(false)) => status.unwrap_or_default(),
        (None | Some(StatusFilter::Unread), Some(true)) => StatusFilter::Unread,
        (Some(_), Some(true)) => {
            return Err(ApiError::invalid(
                "unread_only=true asks for status=unread: pass one of them",
            ))
        }
    };
    let filter = InboxFilter {
        status,
        archived: q.archived.unwrap_or_default(),
        hidden: &[],
    };
    let page = svc
        .page(
            &user,
            PageRequest {
                before,
                limit,
                filter,
            },
        )
        .await?;
    Ok(Json(page))
}

/// `GET /v1/inbox/unread_count` → `{"unread_count": n, "unseen_count": m}`
#[utoipa::path(get, path = "/v1/inbox/unread_count", tag = "inbox",
    responses((status = 200, body = UnreadCount)))]
pub async fn unread_count(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
) -> ApiResult<Json<Value>> {
    let counts = svc.counts(&user).await?;
    Ok(Json(
        json!({ "unread_count": counts.unread, "unseen_count": counts.unseen }),
    ))
}

/// `POST /v1/inbox/bulk` → 200 `{"updated": n, "not_found": [...]}`
#[utoipa::path(post, path = "/v1/inbox/bulk", tag = "inbox", request_body = BulkRequest,
    responses((status = 200, description = "Applied; the user's other devices are told (a `marked` frame on the live feed). `updated` counts the items found (by ids) or changed (by `before` or `all`); `not_found` lists ids the user has no item for", body = BulkOutcome),
              (status = 422, description = "An unknown action, not exactly one of ids / before / all, no ids or more than 100, an id that is not a UUID, or a bad cursor; nothing changed", body = herald_http::openapi::ErrorBody)))]
pub async fn bulk(
    State(svc): State<InboxService>,
    InboxUser(user): InboxUser,
    JsonBody(body): JsonBody<BulkRequest>,
) -> ApiResult<Json<BulkOutcome>> {
    let scope = match (body.ids, body.before, body.all) {
        (Some(ids), None, None | Some(false)) => {
            if ids.is_empty() || ids.len() > MAX_BULK {
                return Err(ApiError::invalid(format!(
                    "ids must name 1 to {MAX_BULK} items"
                )));
            }
            let mut parsed: Vec<uuid::Uuid> = Vec::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                let id = Uuid::parse_str(id).map_err(|_| {
                    ApiError::invalid(format!("ids[{i}] is not an item id (a UUID)"))
                })?;
                if !parsed.contains(&id) {
                    parsed.push(id);
                }
            }
            BulkScope::Ids(parsed)
        }
        (None, Some(before), None | Some(false)) => {
            BulkScope::Before(cursor::decode(&before).ok_or_else(|| {
                ApiError::invalid(
                    "before is not valid: pass an item's `cursor` or a `next_cursor` as given",
                )
            })?)
        }
        (None, None, Some(true)) => BulkScope::All,
        _ => {
            return Err(ApiError::invalid(
                "pass exactly one of `ids`, `before` or `all: true`",
            ))
        }
    };
    Ok(Json(svc.bulk(&user, body.action, scope).await?))
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
