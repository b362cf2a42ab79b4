//! `/v1/analytics/summary`, `/v1/analytics/channels/{channel}` and `/v1/health/status`: the
//! delivery log and the consumer groups' lag as an operator asks about them (the figures are
//! computed by `herald_usecases::analytics`).

use crate::http::{ApiError, ApiResult, PathParams, QueryParams};
use axum::extract::State;
use axum::{Extension, Json};
use herald_core::model::Channel;
use herald_core::Context;
use herald_usecases::analytics::{self, ChannelReport, HealthStatus, LagHistory, Summary};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WindowParams {
    /// The last this many hours (default 24, at most the delivery log's retention).
    hours: Option<i64>,
}

#[utoipa::path(get, path = "/v1/analytics/summary", tag = "analytics", params(WindowParams), responses((status = 200, body = herald_usecases::analytics::Summary)))]
pub async fn summary(
    State(ctx): State<Context>,
    QueryParams(params): QueryParams<WindowParams>,
) -> ApiResult<Json<Summary>> {
    Ok(Json(analytics::summary(&ctx, params.hours).await?))
}

#[utoipa::path(get, path = "/v1/analytics/channels/{channel}", tag = "analytics", params(("channel" = Channel, Path), WindowParams), responses((status = 200, body = herald_usecases::analytics::ChannelReport), (status = 404, description = "No such channel", body = herald_http::openapi::ErrorBody)))]
pub async fn channel(
    State(ctx): State<Context>,
    PathParams(channel): PathParams<String>,
    QueryParams(params): QueryParams<WindowParams>,
) -> ApiResult<Json<ChannelReport>> {
    let channel: Channel = channel.parse().map_err(|_| {
        ApiError::not_found(format!(
            "channel `{channel}`: one of in_app, push, email, sms, webhook"
        ))
    })?;
    Ok(Json(analytics::channel(&ctx, channel, params.hours).await?))
}

#[utoipa::path(get, path = "/v1/health/status", tag = "analytics", responses((status = 200, body = herald_usecases::analytics::HealthStatus)))]
pub async fn health(
    State(ctx): State<Context>,
    Extension(history): Extension<Arc<LagHistory>>,
) -> ApiResult<Json<HealthStatus>> {
    Ok(Json(analytics::health(&ctx, &history).await?))
}
