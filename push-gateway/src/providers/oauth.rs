//! Google service-account OAuth2 for the FCM HTTP v1 API: reads the service-account JSON file,
//! signs an RS256 assertion with its private key, exchanges it at the file's `token_uri` for an
//! access token (the JWT-bearer grant of RFC 7523) and caches that token until shortly before
//! it expires.

use herald_core::{Error, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The OAuth scope that lets a token send FCM messages.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Google's token endpoint, for files that do not name one.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// Lifetime asked for in the assertion; Google grants at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// A cached token this close to its expiry is refreshed rather than handed out, so a request
/// never leaves with a token that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The fields of a service-account key file that the token exchange needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    /// May be left out when `push.fcm.project_id` names the project.
    #[serde(default)]
    pub project_id: String,
    /// The key's id, sent as the assertion's `kid` when present.
    #[serde(default)]
    pub private_key_id: String,
    /// PEM (PKCS#8) RSA private key.
    pub private_key: String,
    pub client_email: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    DEFAULT_TOKEN_URI.to_owned()
}

// Hand-written so that a logged account never shows its private key.
impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("private_key_id", &self.private_key_id)
            .field("private_key", &"***")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccount {
    /// Reads a service-account JSON file. Errors name the path and never quote the file, which
    /// holds the private key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display();
        let text = std::fs::read(path).map_err(|e| {
            Error::invalid(format!("FCM credentials file {shown} cannot be read: {e}"))
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            // serde_json may quote the offending value; only "missing field `x`" is safe (and
            // useful) to repeat, everything else is reduced to its position.
            let what = if e.to_string().starts_with("missing field") {
                e.to_string()
            } else {
                format!("malformed at line {} column {}", e.line(), e.column())
            };
            Error::invalid(format!(
                "FCM credentials file {shown} is not a service-account key: {what}"
            ))
        })
    }
}

/// The claims of the assertion exchanged for an access token.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The token endpoint's error answer (`{"error": "invalid_grant", "error_description": ...}`).
#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

struct CachedToken {
    token: String,
    expires_at: Instant,
}

/// Hands out access tokens of one service account: cached, refreshed when less than a minute
/// of validity remains, one exchange at a time however many callers ask at once.
pub struct TokenSource {
    client_email: String,
    token_uri: String,
    key_id: String,
    key: EncodingKey,
    http: reqwest::Client,
    /// The current token; a plain lock because it is never held across an await.
    cached: parking_lot::Mutex<Option<CachedToken>>,
    /// Held during an exchange, so concurrent callers of an empty cache wait for one exchange
    /// instead of each doing their own.
    refresh: tokio::sync::Mutex<()>,
    /// Exchanges attempted so far, and why the last one failed (if it did): callers that waited
    /// on a failed exchange share its failure rather than each trying again in turn, which
    /// with a dead token endpoint would take one timeout per caller.
    attempts: AtomicU64,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A token source for `account`; exchanges time out after `timeout`. Fails when the private
    /// key is not an RSA PEM key.
    pub fn new(account: &ServiceAccount, timeout: Duration) -> Result<Self> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| {
            Error::invalid(format!(
                "the private_key of service account {} is not an RSA PEM key: {e}",
                account.client_email
            ))
        })?;
        // A client of its own: the FCM client may be set to h2c prior knowledge, which the
        // token endpoint need not speak.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::internal("cannot build the OAuth HTTP client").with_source(e))?;
        Ok(Self {
            client_email: account.client_email.clone(),
            token_uri: account.token_uri.clone(),
            key_id: account.private_key_id.clone(),
            key,
            http,
            cached: parking_lot::Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_error: parking_lot::Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a fresh one when it is missing or about to
    /// expire. The error is a short description fit for a retry reason.
    pub async fn token(&self) -> Result<String, String> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let attempts_before = self.attempts.load(Ordering::Acquire);
        let _exchange = self.refresh.lock().await;
        // Whoever held the lock before us may have refreshed already.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        if self.attempts.load(Ordering::Acquire) != attempts_before {
            // An exchange ended while we waited: use what it got, even a token inside the
            // refresh margin, or its failure.
            if let Some(c) = self.cached.lock().as_ref() {
                if c.expires_at > Instant::now() {
                    return Ok(c.token.clone());
                }
            }
            if let Some(e) = self.last_error.lock().clone() {
                return Err(e);
            }
        }
        let result = self.exchange().await;
        match &result {
            Ok((token, lifetime)) => {
                *self.cached.lock() = Some(CachedToken {
                    token: token.clone(),
                    expires_at: Instant::now() + *lifetime,
                });
                *self.last_error.lock() = None;
            }
            Err(e) => *self.last_error.lock() = Some(e.clone()),
        }
        self.attempts.fetch_add(1, Ordering::Release);
        result.map(|(token, _)| token)
    }

    /// Drops the cached token (the API answered 401), so the next call exchanges anew.
    pub fn invalidate(&self) {
        *self.cached.lock() = None;
    }

    /// Drops the cached token only if it is still `rejected`: when many requests hit a 401
    /// together, the first refresh is not thrown away by the later ones.
    pub fn reject(&self, rejected: &str) {
        let mut cached = self.cached.lock();
        if cached.as_ref().is_some_and(|c| c.token == rejected) {
            *cached = None;
        }
    }

    fn fresh(&self) -> Option<String> {
        let cached = self.cached.lock();
        let c = cached.as_ref()?;
        (c.expires_at.saturating_duration_since(Instant::now()) >= REFRESH_MARGIN)
            .then(|| c.token.clone())
    }

    /// One JWT-bearer exchange: the token and how long it is valid.
    async fn exchange(&self) -> Result<(String, Duration), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "system clock is before 1970".to_owned())?
            .as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = (!self.key_id.is_empty()).then(|| self.key_id.clone());
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("cannot sign the assertion: {e}"))?;

        let resp = self
            .http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "token endpoint timed out".to_owned()
                } else {
                    format!("token endpoint unreachable: {}", root_cause(&e))
                }
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("token endpoint answer unreadable: {}", root_cause(&e)))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<TokenError>(&body) {
                Ok(err) if !err.error.is_empty() => {
                    let mut reason = format!("token endpoint answered {status}: {}", err.error);
                    if !err.error_description.is_empty() {
                        reason.push_str(" (");
                        reason.extend(err.error_description.chars().take(100));
                        reason.push(')');
                    }
                    reason
                }
                _ => format!("token endpoint answered {status}"),
            });
        }
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| "token endpoint answer is not a token response".to_owned())?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(ASSERTION_LIFETIME_SECS));
        Ok((answer.access_token, lifetime))
    }
}

/// The innermost cause of an error: reqwest's own message ("error sending request") says less
/// than what is under it ("connection refused").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
