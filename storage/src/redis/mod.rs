//! Redis adapters (the `redis://` scheme): the delay store, the preference cache, the live
//! hub, the shared throttle, and the open broadcasts in front of the broadcast store.
//!
//! URL: `redis://[:password@]host:port[/db][?prefix=NAME]`. `prefix` (default `herald`) keeps
//! several deployments (or test cases) apart on one server; every key of a store carries it as
//! a hash tag (`{NAME}:...`), so a store's keys share one slot and its scripts would stay valid
//! on a Redis Cluster. `cluster=true` makes the host a cluster's seed node (see [`Conn`]).

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
use std::time::Duration;

/// Where a Redis URL points: the part the `redis` crate understands, the key prefix, and
/// whether it is a cluster (`cluster=true`: the host is a seed node, the rest are found).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub base: String,
    pub prefix: String,
    pub cluster: bool,
}

/// Takes Herald's parameters (`prefix`, `cluster`) out of a Redis URL.
pub(crate) fn split_url(url: &BackendUrl) -> Result<Target> {
    let (base, query) = match url.raw.split_once('?') {
        Some((b, q)) => (b.to_owned(), q),
        None => (url.raw.clone(), ""),
    };
    let mut prefix = "herald".to_owned();
    let mut cluster = false;
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
            Some(("cluster", v)) => {
                cluster = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(Error::invalid(format!(
                            "bad Redis URL {url}: cluster must be true or false"
                        )))
                    }
                }
            }
            _ => rest.push(pair),
        }
    }
    let base = if rest.is_empty() {
        base
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(Target {
        base,
        prefix,
        cluster,
    })
}

/// A connection to one Redis server (through the connection manager, which multiplexes and
/// reconnects) or to a Redis Cluster (the cluster client, which routes each command by its
/// keys' slot and follows slot moves). Every key of a store carries the store's prefix as a
/// hash tag, so a store's scripts, `MGET`s and transactions stay within one slot.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(::redis::aio::ConnectionManager),
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl ::redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a ::redis::Cmd,
    ) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for its answer: a server that hangs (paused, swapping, a
/// network that drops packets) fails the command instead of wedging its caller. No command
/// Herald sends blocks on the server side (the live hub's subscriptions have a connection of
/// their own).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection manager's reconnects: 1 s, then every 2 s (with jitter), six attempts per
/// reconnect (a command after that starts the next round). The crate's defaults multiply a
/// 1 s delay by 100, so a server back after a 30 s outage waited up to a minute more.
fn manager_config() -> ::redis::aio::ConnectionManagerConfig {
    ::redis::aio::ConnectionManagerConfig::new()
        .set_factor(2)
        .set_max_delay(2_000)
        .set_number_of_retries(6)
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
}

/// A connection on `url`, checked with a PING, and the key prefix.
pub(crate) async fn connect(url: &BackendUrl) -> Result<(Conn, String)> {
    let target = split_url(url)?;
    let unavailable = |e| Error::unavailable(format!("cannot connect to Redis at {url}"), e);
    let mut conn = if target.cluster {
        let client = ::redis::cluster::ClusterClientBuilder::new(vec![target.base.as_str()])
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(|e| Error::invalid(format!("bad Redis URL {url}")).with_source(e))?;
        Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
    } else {
        let client = ::redis::Client::open(target.base.as_str())
            .map_err(|e| Error::invalid(format!("bad Redis URL {url}")).with_source(e))?;
        Conn::Single(
            client
                .get_connection_manager_with_config(manager_config())
                .await
                .map_err(unavailable)?,
        )
    };
    let _: String = ::redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(redis_error)?;
    Ok((conn, target.prefix))
}

/// One PING on `conn` (what the stores' `ping` asks).
pub(crate) async fn ping(conn: &Conn) -> Result<()> {
    let _: String = ::redis::cmd("PING")
        .query_async(&mut conn.clone())
        .await
        .map_err(redis_error)?;
    Ok(())
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
            Target {
                base: "redis://:pw@127.0.0.1:6379/2?protocol=resp3".to_owned(),
                prefix: "eu1".to_owned(),
                cluster: false,
            }
        );
        let plain = BackendUrl::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(
            split_url(&plain).unwrap(),
            Target {
                base: "redis://127.0.0.1:6379".to_owned(),
                prefix: "herald".to_owned(),
                cluster: false,
            }
        );
        let cluster = BackendUrl::parse("redis://127.0.0.1:7000?cluster=true").unwrap();
        assert!(split_url(&cluster).unwrap().cluster);
        let wrong = BackendUrl::parse("redis://127.0.0.1:7000?cluster=maybe").unwrap();
        assert!(split_url(&wrong).is_err());
        let bad = BackendUrl::parse("redis://127.0.0.1?prefix={x}").unwrap();
        assert!(split_url(&bad).is_err());
    }
}
