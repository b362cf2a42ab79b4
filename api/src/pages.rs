//! Keyset pagination parameters: `?limit=&cursor=`, the cursor an opaque token wrapping the
//! last key of the previous page.

use crate::http::{ApiError, ApiResult};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::Deserialize;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The page limit and the key the cursor wraps, for handlers whose query struct holds
    /// `limit` and `cursor` next to filters of their own.
    pub fn keyset(limit: Option<u32>, cursor: Option<String>) -> ApiResult<(u32, Option<String>)> {
        let page = PageParams { limit, cursor };
        Ok((page.limit()?, page.after()?))
    }

    /// [`PageParams::keyset`] for lists keyed by a time-ordered id (campaigns, dead
    /// letters): a cursor that does not wrap such an id is refused, not answered with an
    /// empty page.
    pub fn id_keyset(
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> ApiResult<(u32, Option<String>)> {
        let (limit, key) = Self::keyset(limit, cursor)?;
        if let Some(k) = &key {
            uuid::Uuid::parse_str(k).map_err(|_| ApiError::invalid("cursor is not valid"))?;
        }
        Ok((limit, key))
    }

    pub fn limit(&self) -> ApiResult<u32> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            ))),
        }
    }

    /// The key the cursor wraps, if any.
    pub fn after(&self) -> ApiResult<Option<String>> {
        self.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| {
                B64.decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::invalid("cursor is not valid"))
            })
            .transpose()
    }
}

/// The cursor of the next page: the last key, if the page was full.
pub fn next_cursor(last_key: Option<&str>, page_len: usize, limit: u32) -> Option<String> {
    (page_len as u32 == limit)
        .then_some(last_key)
        .flatten()
        .map(|k| B64.encode(k))
}

/// An optional filter parameter (`?status=`, `?channel=`): absent or empty means no filter.
pub fn filter_param<T>(value: Option<&str>) -> ApiResult<Option<T>>
where
    T: std::str::FromStr<Err = herald_core::Error>,
{
    Ok(value
        .filter(|v| !v.is_empty())
        .map(str::parse)
        .transpose()?)
}
