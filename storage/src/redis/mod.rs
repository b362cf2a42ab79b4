//! Redis adapters (the `redis://` scheme): the delay store, the preference cache, the live
//! hub, the shared throttle, and the open broadcasts in front of the broadcast store.
//!
//! URL: `redis://[:password@]host:port[/db][?prefix=NAME]`. `prefix` (default `herald`) keeps
//! several deployments (or test cases) apart on one server; every key of a store carries it as
//! a hash tag (`{NAME}:...`), so a store's keys share one slot and its scripts would stay valid
//! on a Redis Cluster. The adapter connects to one server (or a proxy) through the `redis`
//! crate's `ConnectionManager`, which multiplexes requests on one connection and reconnects
//! when it drops; a cluster client is not built yet.

mod broadcasts;
mod cache;
mod delays;
mod live;
mod throttle;

pub use broadcasts::RedisBroadcastCache;
pub use cache::RedisPreferenceCache;
pub use delays::RedisDelays;
pub use live::RedisLiveHub;
pub use throttle::RedisThrottle;

use crate::BackendUrl;
use herald_core::{Error, Result};

/// The part of the URL the `redis` crate understands, and the key prefix.
pub(crate) fn split_url(url: &BackendUrl) -> Result<(String, String)> {
    let (base, query) = match url.raw.split_once('?') {
        Some((b, q)) => (b.to_owned(), q),
        None => (url.raw.clone(), ""),
    };
    let mut prefix = "herald".to_owned();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("prefix", v)) if !v.is_empty() && !v.contains(['{', '}']) => {
                prefix = v.to_owned()
            }
            Some(("prefix", _)) => {
                return Err(Error::invalid(format!(
                    "bad Redis URL {url}: prefix must be non-empty and hold no braces"
                )))
            }
            _ => rest.push(pair),
        }
    }
    let base = if rest.is_empty() {
        base
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((base, prefix))
}

/// A connection manager on `url`, checked with a PING.
pub(crate) async fn connect(url: &BackendUrl) -> Result<(::redis::aio::ConnectionManager, String)> {
    let (base, prefix) = split_url(url)?;
    let client = ::redis::Client::open(base.as_str())
        .map_err(|e| Error::invalid(format!("bad Redis URL {url}")).with_source(e))?;
    let mut conn = client
        .get_connection_manager()
        .await
        .map_err(|e| Error::unavailable(format!("cannot connect to Redis at {url}"), e))?;
    let _: String = ::redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(redis_error)?;
    Ok((conn, prefix))
}

pub(crate) fn redis_error(e: ::redis::RedisError) -> Error {
    Error::unavailable("Redis unavailable", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_taken_out_of_the_url_and_the_rest_kept() {
        let url =
            BackendUrl::parse("redis://:pw@127.0.0.1:6379/2?prefix=eu1&protocol=resp3").unwrap();
        assert_eq!(
            split_url(&url).unwrap(),
            (
                "redis://:pw@127.0.0.1:6379/2?protocol=resp3".to_owned(),
                "eu1".to_owned()
            )
        );
        let plain = BackendUrl::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(
            split_url(&plain).unwrap(),
            ("redis://127.0.0.1:6379".to_owned(), "herald".to_owned())
        );
        let bad = BackendUrl::parse("redis://127.0.0.1?prefix={x}").unwrap();
        assert!(split_url(&bad).is_err());
    }
}
