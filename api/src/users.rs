//! `/v1/users/{id}`: users, their preferences and devices, and inbox token minting.

use crate::http::{ApiError, ApiResult, JsonBody, PathParams};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Duration;
use herald_core::ids::validate_key;
use herald_core::model::*;
use herald_core::Context;
use serde::Deserialize;
use serde_json::{json, Value};

/// The body of `PUT /v1/users/{id}` and one line of an import (where `id` is required).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserInput {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Attributes,
}

impl UserInput {
    /// Validates the input and makes the user record to store under `id` at time `now`.
    pub fn into_user(self, id: String, now: chrono::DateTime<chrono::Utc>) -> ApiResult<User> {
        validate_user_fields(
            &id,
            self.email.as_deref(),
            self.phone.as_deref(),
            &self.attributes,
        )?;
        Ok(User {
            id,
            email: self.email,
            phone: self.phone,
            attributes: self.attributes,
            created_at: now,
            updated_at: now,
        })
    }
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("user `{id}` not found"))
}

#[utoipa::path(put, path = "/v1/users/{user_id}", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), request_body = UserInput, responses((status = 200, description = "Stored (created or replaced); `created_at` is the first write's", body = User)))]
pub async fn put_user(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
    JsonBody(input): JsonBody<UserInput>,
) -> ApiResult<Json<User>> {
    validate_key("user id", &user_id)?;
    if input.id.as_deref().is_some_and(|id| id != user_id) {
        return Err(ApiError::invalid(
            "`id` in the body differs from the one in the path",
        ));
    }
    let user = input.into_user(user_id, ctx.clock.now())?;
    ctx.ports
        .directory
        .upsert_users(std::slice::from_ref(&user))
        .await?;
    // Read back so `created_at` is the stored one when this was an update.
    let stored = ctx.ports.directory.get_user(&user.id).await?;
    Ok(Json(stored.unwrap_or(user)))
}

#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), responses((status = 200, body = User), (status = 404, description = "No such user", body = herald_http::openapi::ErrorBody)))]
pub async fn get_user(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Json<User>> {
    ctx.ports
        .directory
        .get_user(&user_id)
        .await?
        .map(Json)
        .ok_or_else(|| user_not_found(&user_id))
}

#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), responses((status = 204, description = "Deleted with its preferences and devices"), (status = 404, description = "No such user", body = herald_http::openapi::ErrorBody)))]
pub async fn delete_user(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<StatusCode> {
    if ctx.ports.directory.delete_user(&user_id).await? {
        ctx.ports.preference_cache.invalidate(&user_id).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(user_not_found(&user_id))
    }
}

#[utoipa::path(put, path = "/v1/users/{user_id}/preferences", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), request_body = Preferences, responses((status = 200, body = Preferences), (status = 404, description = "No such user", body = herald_http::openapi::ErrorBody)))]
pub async fn put_preferences(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
    JsonBody(prefs): JsonBody<Preferences>,
) -> ApiResult<Json<Preferences>> {
    prefs.validate()?;
    if !ctx
        .ports
        .directory
        .put_preferences(&user_id, &prefs)
        .await?
    {
        return Err(user_not_found(&user_id));
    }
    ctx.ports.preference_cache.invalidate(&user_id).await?;
    Ok(Json(prefs))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/preferences", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), responses((status = 200, description = "The preferences; everything allowed when none were set", body = Preferences), (status = 404, description = "No such user", body = herald_http::openapi::ErrorBody)))]
pub async fn get_preferences(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Json<Preferences>> {
    let ids = [user_id.clone()];
    let mut stored = ctx.ports.directory.get_preferences(&ids).await?;
    if let Some(prefs) = stored.remove(&user_id) {
        return Ok(Json(prefs));
    }
    // No stored preferences: the defaults apply, if the user exists.
    match ctx.ports.directory.get_user(&user_id).await? {
        Some(_) => Ok(Json(Preferences::default())),
        None => Err(user_not_found(&user_id)),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceInput {
    platform: Platform,
    token: String,
}

#[utoipa::path(post, path = "/v1/users/{user_id}/devices", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), request_body = DeviceInput, responses((status = 201, description = "Registered (a token of another user moves to this one)", body = Device), (status = 404, description = "No such user", body = herald_http::openapi::ErrorBody)))]
pub async fn add_device(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
    JsonBody(input): JsonBody<DeviceInput>,
) -> ApiResult<(StatusCode, Json<Device>)> {
    validate_device_token(&input.token)?;
    let now = ctx.clock.now();
    let device = Device {
        user_id: user_id.clone(),
        platform: input.platform,
        token: input.token,
        created_at: now,
        last_used_at: now,
    };
    if !ctx.ports.directory.put_device(&device).await? {
        return Err(user_not_found(&user_id));
    }
    Ok((StatusCode::CREATED, Json(device)))
}

#[utoipa::path(get, path = "/v1/users/{user_id}/devices", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), responses((status = 200, body = crate::openapi::DeviceList), (status = 404, description = "No such user", body = herald_http::openapi::ErrorBody)))]
pub async fn list_devices(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    if ctx.ports.directory.get_user(&user_id).await?.is_none() {
        return Err(user_not_found(&user_id));
    }
    let mut devices = ctx
        .ports
        .directory
        .list_devices(std::slice::from_ref(&user_id))
        .await?;
    devices.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.token.cmp(&b.token)));
    Ok(Json(json!({ "devices": devices })))
}

#[utoipa::path(delete, path = "/v1/users/{user_id}/devices/{token}", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)"), ("token" = String, Path, description = "The push token")), responses((status = 204, description = "Removed"), (status = 404, description = "No such device of this user", body = herald_http::openapi::ErrorBody)))]
pub async fn delete_device(
    State(ctx): State<Context>,
    PathParams((user_id, token)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    if ctx.ports.directory.delete_device(&user_id, &token).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "user `{user_id}` has no device with that token"
        )))
    }
}

#[utoipa::path(post, path = "/v1/users/{user_id}/token", tag = "users", params(("user_id" = String, Path, description = "The user's id (1 to 255 of letters, digits and `_ - . @ : +`)")), responses((status = 200, description = "An inbox token for the user's clients", body = crate::openapi::InboxToken), (status = 404, description = "No such user", body = herald_http::openapi::ErrorBody)))]
pub async fn mint_token(
    State(ctx): State<Context>,
    PathParams(user_id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    if ctx.ports.directory.get_user(&user_id).await?.is_none() {
        return Err(user_not_found(&user_id));
    }
    let now = ctx.clock.now();
    let ttl = i64::try_from(ctx.config.inbox.token_ttl_secs).unwrap_or(i64::MAX / 2);
    let expires_at = now + Duration::seconds(ttl.min(10 * 365 * 24 * 3600));
    let token = herald_core::token::mint(
        ctx.secrets.token_secret.expose().as_bytes(),
        &user_id,
        now,
        expires_at,
    );
    Ok(Json(json!({ "token": token, "expires_at": expires_at })))
}
