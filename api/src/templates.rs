//! `/v1/templates`: per-channel content with `{{ user.x }}` / `{{ data.y }}` placeholders.

use crate::http::{ApiError, ApiResult, JsonBody, PathParams, QueryParams};
use crate::pages::{next_cursor, PageParams};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herald_core::ids::validate_key;
use herald_core::model::{Template, TemplateContent};
use herald_core::Context;
use serde_json::{json, Value};

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("template `{id}` not found"))
}

#[utoipa::path(put, path = "/v1/templates/{template_id}", tag = "templates", params(("template_id" = String, Path)), request_body = TemplateContent, responses((status = 200, body = crate::openapi::TemplateView)))]
pub async fn put(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
    JsonBody(content): JsonBody<TemplateContent>,
) -> ApiResult<Json<Template>> {
    validate_key("template id", &id)?;
    content.validate()?;
    let now = ctx.clock.now();
    let template = Template {
        id: id.clone(),
        content,
        created_at: now,
        updated_at: now,
    };
    ctx.ports.directory.put_template(&template).await?;
    let stored = ctx.ports.directory.get_template(&id).await?;
    Ok(Json(stored.unwrap_or(template)))
}

/// `POST /v1/previews/template`: content (stored or given) rendered for a user, as the
/// fan-out would render it; nothing is written.
#[utoipa::path(post, path = "/v1/previews/template", tag = "templates",
    request_body = herald_usecases::preview::PreviewInput,
    responses((status = 200, body = herald_usecases::preview::Preview),
              (status = 404, description = "No such template or user", body = herald_http::openapi::ErrorBody)))]
pub async fn preview(
    State(ctx): State<Context>,
    JsonBody(input): JsonBody<herald_usecases::preview::PreviewInput>,
) -> ApiResult<Json<herald_usecases::preview::Preview>> {
    Ok(Json(herald_usecases::preview::render(&ctx, input).await?))
}

#[utoipa::path(get, path = "/v1/templates/{template_id}", tag = "templates", params(("template_id" = String, Path)), responses((status = 200, body = crate::openapi::TemplateView), (status = 404, description = "No such template", body = herald_http::openapi::ErrorBody)))]
pub async fn get(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Template>> {
    ctx.ports
        .directory
        .get_template(&id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates", params(PageParams), responses((status = 200, body = crate::openapi::TemplatePage)))]
pub async fn list(
    State(ctx): State<Context>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Value>> {
    let limit = page.limit()?;
    let after = page.after()?;
    let templates = ctx
        .ports
        .directory
        .list_templates(after.as_deref(), limit)
        .await?;
    let next = next_cursor(
        templates.last().map(|t| t.id.as_str()),
        templates.len(),
        limit,
    );
    Ok(Json(json!({ "templates": templates, "next_cursor": next })))
}

#[utoipa::path(delete, path = "/v1/templates/{template_id}", tag = "templates", params(("template_id" = String, Path)), responses((status = 204, description = "Deleted"), (status = 404, description = "No such template", body = herald_http::openapi::ErrorBody)))]
pub async fn delete(
    State(ctx): State<Context>,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    if ctx.ports.directory.delete_template(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}
