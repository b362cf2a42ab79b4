//! The throttle on Redis: one key per limit, `{prefix}:throttle:<key>`, holding the GCRA's
//! theoretical arrival time (microseconds on the Redis server's clock, with fractions: at
//! hundreds of thousands of sends a second the interval is a fraction of a microsecond). A reservation is one
//! Lua script, so concurrent reservations from every node are serialised by Redis and share
//! one rate; the server's `TIME` is the only clock, so the nodes' clocks do not matter. The
//! key expires once its arrival time has passed (an idle limit takes no memory).

use super::Conn;
use super::{connect, redis_error};
use crate::BackendUrl;
use async_trait::async_trait;
use herald_core::ports::{Rate, Throttle};
use herald_core::Result;
use std::time::Duration;

const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = 1000000 / tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
local wait = new_tat - burst * interval - now
if wait < 0 then wait = 0 end
return math.floor(wait)
"#;

pub struct RedisThrottle {
    conn: Conn,
    prefix: String,
    script: ::redis::Script,
}

impl RedisThrottle {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        let (conn, prefix) = connect(url).await?;
        Ok(Self {
            conn,
            prefix,
            script: ::redis::Script::new(RESERVE),
        })
    }
}

#[async_trait]
impl Throttle for RedisThrottle {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.conn).await
    }

    async fn reserve(&self, key: &str, n: u32, rate: Rate) -> Result<Duration> {
        let wait_us: i64 = self
            .script
            .key(format!("{{{}}}:throttle:{key}", self.prefix))
            .arg(rate.per_second.max(1))
            .arg(rate.burst.max(1))
            .arg(n)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_error)?;
        Ok(Duration::from_micros(wait_us.max(0) as u64))
    }
}
