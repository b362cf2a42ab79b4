//! ScyllaDB / Cassandra adapters (the inbox store and the per-user broadcast states), on the
//! `scylla` driver.
//!
//! `scylla://[user:password@]host1[:port],host2[:port]/keyspace[?settings]` opens one session
//! per port: shard-aware connections (on ScyllaDB: one per shard of every node), token-aware
//! routing (a statement goes to a replica of its partition, and to the right shard), prepared
//! statements only (every statement of an adapter is prepared once at open), every statement
//! marked idempotent (all of them are: no counters, no list appends, no LWT), so the driver's
//! retry policy may retry them after a timeout. Settings:
//!
//! - `consistency` (`local_quorum`): `one`, `local_one`, `quorum`, `local_quorum`,
//!   `each_quorum`, `all`;
//! - `local_dc`: the datacenter to route to first (replicas elsewhere only on failure);
//! - `speculative_ms`: send a second copy of an idempotent request after that long without an
//!   answer (off by default: it doubles the load exactly when a node is slow);
//! - `request_timeout_ms` (5000), `connect_timeout_ms` (5000);
//! - `replication_class` (`NetworkTopologyStrategy`) and `replication_factor` (3): the
//!   keyspace's replication when the adapter creates it (an existing keyspace is left as is).
//!
//! The schemas are `migrations/cql/<port>/*.cql`, applied in the keyspace on open and recorded
//! in its `herald_migrations` table; DDL is `IF NOT EXISTS`, so two processes opening at once
//! both succeed.

mod broadcast_states;
mod inbox;

pub use broadcast_states::{cql as broadcast_states_cql, ScyllaBroadcastStates};
pub use inbox::{cql as inbox_cql, ScyllaInbox};
/// The driver's session type, for the smoke suite and tools.
pub use scylla::client::session::Session;

use crate::migrations::Migration;
use crate::BackendUrl;
use herald_core::{Error, Result};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use std::sync::Arc;
use std::time::Duration;

/// A CQL schema file of one port.
macro_rules! cql_migration {
    ($port:literal, $version:literal) => {
        $crate::migrations::Migration {
            version: $version,
            sql: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../migrations/cql/",
                $port,
                "/",
                $version,
                ".cql"
            )),
        }
    };
}
pub(crate) use cql_migration;

/// What a `scylla://` URL says.
#[derive(Clone, PartialEq, Eq)]
pub struct ScyllaSettings {
    pub hosts: Vec<String>,
    pub keyspace: String,
    pub credentials: Option<(String, String)>,
    pub consistency: Consistency,
    pub local_dc: Option<String>,
    pub speculative: Option<Duration>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub replication_class: String,
    pub replication_factor: u32,
}

impl std::fmt::Debug for ScyllaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaSettings")
            .field("hosts", &self.hosts)
            .field("keyspace", &self.keyspace)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("consistency", &self.consistency)
            .field("local_dc", &self.local_dc)
            .field("speculative", &self.speculative)
            .finish_non_exhaustive()
    }
}

fn invalid(url: &BackendUrl, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{}: {why}", url.redacted()))
}

/// A name CQL takes unquoted (keyspaces, datacenters in the replication map).
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl ScyllaSettings {
    pub fn parse(url: &BackendUrl) -> Result<ScyllaSettings> {
        let rest = url
            .raw
            .split_once("://")
            .map(|(_, r)| r)
            .ok_or_else(|| invalid(url, "expected scylla://host/keyspace"))?;
        let (base, params) = crate::url::split_query(rest);
        let (userinfo, hostpath) = match base.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, base),
        };
        let (hosts, keyspace) = hostpath
            .split_once('/')
            .ok_or_else(|| invalid(url, "no keyspace: expected scylla://host1,host2/keyspace"))?;
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.starts_with('[')
                    || h.rsplit_once(':')
                        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    h.to_owned()
                } else {
                    format!("{h}:9042")
                }
            })
            .collect();
        if hosts.is_empty() {
            return Err(invalid(url, "no host"));
        }
        if !is_identifier(keyspace) {
            return Err(invalid(
                url,
                "the keyspace must be a letter then letters, digits or `_` (48 at most)",
            ));
        }
        let credentials = userinfo.map(|u| match u.split_once(':') {
            Some((user, pass)) => (user.to_owned(), pass.to_owned()),
            None => (u.to_owned(), String::new()),
        });
        let mut s = ScyllaSettings {
            hosts,
            keyspace: keyspace.to_owned(),
            credentials,
            consistency: Consistency::LocalQuorum,
            local_dc: None,
            speculative: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            replication_class: "NetworkTopologyStrategy".into(),
            replication_factor: 3,
        };
        let ms = |k: &str, v: &str| -> Result<Duration> {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    invalid(
                        url,
                        format!("{k} must be a positive number of milliseconds"),
                    )
                })
        };
        for (k, v) in params {
            match k.as_str() {
                "consistency" => {
                    s.consistency = match v.to_ascii_lowercase().as_str() {
                        "one" => Consistency::One,
                        "local_one" => Consistency::LocalOne,
                        "quorum" => Consistency::Quorum,
                        "local_quorum" => Consistency::LocalQuorum,
                        "each_quorum" => Consistency::EachQuorum,
                        "all" => Consistency::All,
                        other => {
                            return Err(invalid(
                                url,
                                format!("unknown consistency `{other}`: one, local_one, quorum, local_quorum, each_quorum or all"),
                            ))
                        }
                    }
                }
                "local_dc" if !v.is_empty() => s.local_dc = Some(v),
                "speculative_ms" => s.speculative = Some(ms(&k, &v)?),
                "request_timeout_ms" => s.request_timeout = ms(&k, &v)?,
                "connect_timeout_ms" => s.connect_timeout = ms(&k, &v)?,
                "replication_class" => match v.as_str() {
                    "NetworkTopologyStrategy" | "SimpleStrategy" => s.replication_class = v,
                    _ => {
                        return Err(invalid(
                            url,
                            "replication_class must be NetworkTopologyStrategy or SimpleStrategy",
                        ))
                    }
                },
                "replication_factor" => {
                    s.replication_factor = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=9).contains(n))
                        .ok_or_else(|| invalid(url, "replication_factor must be 1 to 9"))?
                }
                other => return Err(invalid(url, format!("unknown setting `{other}`"))),
            }
        }
        Ok(s)
    }

    /// The keyspace's DDL (applied when it does not exist).
    pub fn create_keyspace(&self) -> String {
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = \
             {{'class': '{}', 'replication_factor': {}}}",
            self.keyspace, self.replication_class, self.replication_factor
        )
    }
}

pub(crate) fn db_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::unavailable("the ScyllaDB/Cassandra backend failed", e)
}

/// Connects, creates the keyspace if needed, applies `migrations` in it.
pub(crate) async fn connect(
    url: &BackendUrl,
    port: &str,
    migrations: &[Migration],
) -> Result<Arc<Session>> {
    let s = ScyllaSettings::parse(url)?;
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &s.local_dc {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(true);
    }
    let profile = ExecutionProfile::builder()
        .consistency(s.consistency)
        .request_timeout(Some(s.request_timeout))
        .load_balancing_policy(policy.build())
        .retry_policy(Arc::new(DefaultRetryPolicy::new()))
        .speculative_execution_policy(s.speculative.map(|interval| {
            Arc::new(SimpleSpeculativeExecutionPolicy {
                max_retry_count: 1,
                retry_interval: interval,
            }) as _
        }))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&s.hosts)
        .connection_timeout(s.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some((user, pass)) = &s.credentials {
        builder = builder.user(user.clone(), pass.clone());
    }
    let session = builder.build().await.map_err(|e| {
        Error::unavailable(
            format!("cannot connect to ScyllaDB/Cassandra at {}", url.redacted()),
            e,
        )
    })?;
    session
        .query_unpaged(s.create_keyspace(), ())
        .await
        .map_err(db_error)?;
    session
        .use_keyspace(&s.keyspace, false)
        .await
        .map_err(db_error)?;
    migrate(&session, port, migrations).await?;
    Ok(Arc::new(session))
}

/// Applies the port's schema files not yet recorded in `herald_migrations`.
async fn migrate(session: &Session, port: &str, migrations: &[Migration]) -> Result<()> {
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS herald_migrations (\
             port text, version text, applied_at bigint, PRIMARY KEY ((port), version))",
            (),
        )
        .await
        .map_err(db_error)?;
    let applied = prepare(
        session,
        "SELECT applied_at FROM herald_migrations WHERE port = ? AND version = ?",
    )
    .await?;
    let record = prepare(
        session,
        "INSERT INTO herald_migrations (port, version, applied_at) VALUES (?, ?, ?)",
    )
    .await?;
    for m in migrations {
        let done = session
            .execute_unpaged(&applied, (port, m.version))
            .await
            .map_err(db_error)?
            .into_rows_result()
            .map_err(db_error)?
            .rows_num()
            > 0;
        if done {
            continue;
        }
        for statement in m.statements() {
            if let Err(e) = session.query_unpaged(statement.as_str(), ()).await {
                // A file cut short (the process died between its statements) runs again
                // from its first statement: a column it added then is there already.
                if !(is_add_column(&statement) && added_already(&e.to_string())) {
                    return Err(db_error(e));
                }
            }
        }
        let _ = session.await_schema_agreement().await;
        session
            .execute_unpaged(
                &record,
                (port, m.version, chrono::Utc::now().timestamp_micros()),
            )
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

fn is_add_column(statement: &str) -> bool {
    let upper = statement.to_ascii_uppercase();
    upper.starts_with("ALTER TABLE") && upper.contains(" ADD ")
}

/// Whether a server's error says the column an `ALTER TABLE … ADD` adds exists (Cassandra:
/// "Invalid column name x because it conflicts with an existing column"; ScyllaDB: "Column
/// x already exists").
fn added_already(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("conflicts with an existing column") || m.contains("already exist")
}

/// Prepares `cql`, marked idempotent: every statement Herald sends to CQL sets or reads fixed
/// values (no counters, no appends, no LWT), so repeating one changes nothing.
pub(crate) async fn prepare(session: &Session, cql: &str) -> Result<PreparedStatement> {
    let mut p = session.prepare(cql).await.map_err(db_error)?;
    p.set_is_idempotent(true);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<ScyllaSettings> {
        ScyllaSettings::parse(&BackendUrl::parse(raw).unwrap())
    }

    #[test]
    fn a_url_names_hosts_keyspace_and_settings() {
        let s = parse(
            "scylla://app:s3cret@10.0.0.1,10.0.0.2:19042/herald?consistency=quorum&local_dc=dc1\
             &speculative_ms=20&replication_factor=5",
        )
        .unwrap();
        assert_eq!(s.hosts, ["10.0.0.1:9042", "10.0.0.2:19042"]);
        assert_eq!(s.keyspace, "herald");
        assert_eq!(s.credentials, Some(("app".into(), "s3cret".into())));
        assert_eq!(s.consistency, Consistency::Quorum);
        assert_eq!(s.local_dc.as_deref(), Some("dc1"));
        assert_eq!(s.speculative, Some(Duration::from_millis(20)));
        assert_eq!(
            s.create_keyspace(),
            "CREATE KEYSPACE IF NOT EXISTS herald WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'replication_factor': 5}"
        );
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
    }

    #[test]
    fn defaults_are_local_quorum_without_speculation() {
        let s = parse("scylla://127.0.0.1/ks").unwrap();
        assert_eq!(s.consistency, Consistency::LocalQuorum);
        assert_eq!(s.speculative, None);
        assert_eq!(s.credentials, None);
        assert_eq!(s.replication_factor, 3);
        assert_eq!(s.hosts, ["127.0.0.1:9042"]);
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (raw, why) in [
            ("scylla://127.0.0.1", "no keyspace"),
            ("scylla:///ks", "no host"),
            ("scylla://h/ks;drop", "keyspace"),
            ("scylla://h/1ks", "keyspace"),
            ("scylla://h/ks?consistency=serial", "unknown consistency"),
            ("scylla://h/ks?speculative_ms=0", "speculative_ms"),
            ("scylla://h/ks?replication_factor=0", "replication_factor"),
            ("scylla://h/ks?replication_class=Local", "replication_class"),
            ("scylla://h/ks?ttl=3", "unknown setting"),
        ] {
            let e = parse(raw).unwrap_err().to_string();
            assert!(e.contains(why), "{raw}: {e}");
        }
    }
}
