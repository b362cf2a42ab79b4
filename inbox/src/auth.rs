//! Inbox authentication: the token names the user. It comes in `Authorization: Bearer <token>`
//! or, for browsers' WebSockets which cannot set headers, in `?token=` (the header wins when
//! both are given). Any failure is a 401 with the API error body saying why.

use crate::service::InboxService;
use axum::extract::{FromRequestParts, Query};
use axum::http::header;
use axum::http::request::Parts;
use herald_core::token::{self, TokenError};
use herald_http::{bearer, ApiError};
use serde::Deserialize;

/// The user an inbox request is for, from a verified inbox token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxUser(pub String);

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequestParts<InboxService> for InboxUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &InboxService,
    ) -> Result<Self, Self::Rejection> {
        let from_query;
        let token = if parts.headers.contains_key(header::AUTHORIZATION) {
            bearer(&parts.headers).ok_or_else(|| {
                ApiError::Unauthorized(
                    "the Authorization header must be `Bearer <inbox token>`".into(),
                )
            })?
        } else {
            from_query = Query::<TokenQuery>::try_from_uri(&parts.uri)
                .ok()
                .and_then(|q| q.0.token)
                .filter(|t| !t.is_empty());
            from_query.as_deref().ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing inbox token: send `Authorization: Bearer <inbox token>`".into(),
                )
            })?
        };
        let ctx = state.context();
        let claims = token::verify(
            ctx.secrets.token_secret.expose().as_bytes(),
            token,
            ctx.clock.now(),
        )
        .map_err(|e| {
            ApiError::Unauthorized(match e {
                TokenError::Malformed => "the inbox token is malformed".into(),
                TokenError::Algorithm => {
                    "the inbox token uses an unsupported algorithm (HS256 expected)".into()
                }
                TokenError::Signature => "the inbox token's signature does not verify".into(),
                TokenError::Expired => "the inbox token has expired".into(),
                TokenError::NotYetValid => "the inbox token is not valid yet (nbf)".into(),
                TokenError::Critical => {
                    "the inbox token marks extensions critical (crit); none are supported".into()
                }
            })
        })?;
        Ok(InboxUser(claims.sub))
    }
}
