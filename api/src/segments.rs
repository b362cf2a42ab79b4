//! `/v1/segments`: named audiences defined by the filter DSL.

use crate::http::{ApiError, ApiResult, JsonBody, PathParams, QueryParams};
use crate::pages::{next_cursor, PageParams};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herald_core::filter::Filter;
use herald_core::ids::validate_key;
use herald_core::model::Segment;
use herald_core::Context;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentInput {
    #[schema(schema_with = herald_core::filter::filter_schema)]
    filter: Filter,
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("segment `{name}` not found"))
}

#[utoipa::path(put, path = "/v1/segments/{name}", tag = "segments", params(("name" = String, Path)), request_body = SegmentInput, responses((status = 200, body = Segment)))]
pub async fn put(
    State(ctx): State<Context>,
    PathParams(name): PathParams<String>,
    JsonBody(input): JsonBody<SegmentInput>,
) -> ApiResult<Json<Segment>> {
    validate_key("segment name", &name)?;
    let now = ctx.clock.now();
    let segment = Segment {
        name: name.clone(),
        filter: input.filter,
        created_at: now,
        updated_at: now,
    };
    ctx.ports.directory.put_segment(&segment).await?;
    let stored = ctx.ports.directory.get_segment(&name).await?;
    Ok(Json(stored.unwrap_or(segment)))
}

/// `POST /v1/previews/segment`: the size of a filter (and its first users) before it is
/// saved, for the console's filter editor.
#[utoipa::path(post, path = "/v1/previews/segment", tag = "segments", request_body = SegmentInput,
    responses((status = 200, body = herald_usecases::preview::FilterSize)))]
pub async fn preview(
    State(ctx): State<Context>,
    JsonBody(input): JsonBody<SegmentInput>,
) -> ApiResult<Json<herald_usecases::preview::FilterSize>> {
    Ok(Json(
        herald_usecases::preview::size_filter(&ctx, &input.filter).await?,
    ))
}

/// The segment with its current `size` (a COUNT over the directory).
#[utoipa::path(get, path = "/v1/segments/{name}", tag = "segments", params(("name" = String, Path)), responses((status = 200, description = "With its current size", body = crate::openapi::SegmentSized), (status = 404, description = "No such segment", body = herald_http::openapi::ErrorBody)))]
pub async fn get(
    State(ctx): State<Context>,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<Value>> {
    let segment = ctx
        .ports
        .directory
        .get_segment(&name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    let size = ctx
        .ports
        .directory
        .count_users(&segment.filter, ctx.clock.now())
        .await?;
    let mut body = serde_json::to_value(&segment).map_err(|e| {
        ApiError::Core(herald_core::Error::internal("segment did not serialise").with_source(e))
    })?;
    body["size"] = json!(size);
    Ok(Json(body))
}

#[utoipa::path(get, path = "/v1/segments", tag = "segments", params(PageParams), responses((status = 200, body = crate::openapi::SegmentPage)))]
pub async fn list(
    State(ctx): State<Context>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Value>> {
    let limit = page.limit()?;
    let after = page.after()?;
    let segments = ctx
        .ports
        .directory
        .list_segments(after.as_deref(), limit)
        .await?;
    let next = next_cursor(
        segments.last().map(|s| s.name.as_str()),
        segments.len(),
        limit,
    );
    Ok(Json(json!({ "segments": segments, "next_cursor": next })))
}

#[utoipa::path(delete, path = "/v1/segments/{name}", tag = "segments", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = 404, description = "No such segment", body = herald_http::openapi::ErrorBody)))]
pub async fn delete(
    State(ctx): State<Context>,
    PathParams(name): PathParams<String>,
) -> ApiResult<StatusCode> {
    if ctx.ports.directory.delete_segment(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&name))
    }
}
