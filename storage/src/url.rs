//! Backend URLs: the scheme picks the engine, the rest is the engine's own connection string.

use herald_core::{Error, Result};
use std::fmt;
use std::path::Path;

/// A parsed backend URL. `Debug` and `Display` hide any password.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub scheme: String,
    /// The full URL as configured (may hold credentials: never log it).
    pub raw: String,
}

impl BackendUrl {
    pub fn parse(raw: &str) -> Result<BackendUrl> {
        let scheme = raw
            .split_once("://")
            .map(|(s, _)| s)
            .or_else(|| raw.strip_prefix("sqlite:").map(|_| "sqlite"))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or_else(|| {
                Error::invalid(
                    "a backend URL must start with a scheme such as sqlite://, mysql:// or memory://",
                )
            })?;
        Ok(BackendUrl {
            scheme: scheme.to_ascii_lowercase(),
            raw: raw.to_owned(),
        })
    }

    /// The embedded SQLite database `name` under the data directory.
    pub fn embedded(data_dir: &Path, name: &str) -> BackendUrl {
        BackendUrl {
            scheme: "sqlite".into(),
            raw: format!("sqlite://{}", data_dir.join(format!("{name}.db")).display()),
        }
    }

    /// The URL with any password replaced, fit for logs and error messages.
    pub fn redacted(&self) -> String {
        match self.raw.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
                    None => self.raw.clone(),
                },
                None => self.raw.clone(),
            },
            None => self.raw.clone(),
        }
    }
}

/// Splits `base?k=v&k2=v2` into the base and its parameters (Herald's own settings on URLs of
/// engines whose clients take no query string: Kafka, NATS, ScyllaDB).
#[cfg(any(feature = "kafka", feature = "nats", feature = "scylla"))]
pub(crate) fn split_query(raw: &str) -> (&str, Vec<(String, String)>) {
    let Some((base, query)) = raw.split_once('?') else {
        return (raw, Vec::new());
    };
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect();
    (base, params)
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_engine_and_passwords_are_hidden() {
        let u = BackendUrl::parse("mysql://root:hunter2@db:3306/herald").unwrap();
        assert_eq!(u.scheme, "mysql");
        assert_eq!(u.redacted(), "mysql://root:***@db:3306/herald");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(
            BackendUrl::parse("sqlite::memory:").unwrap().scheme,
            "sqlite"
        );
        assert!(BackendUrl::parse("no-scheme").is_err());
    }
}
