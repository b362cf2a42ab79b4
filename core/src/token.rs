//! Inbox tokens: compact HS256 JSON Web Tokens whose `sub` is the user id. Deployments may mint
//! their own with the shared secret; Herald checks the signature, `exp`, `nbf` (with a minute of
//! leeway for clock skew) and `sub`, and refuses any token whose header marks an extension
//! critical (`crit`), since it understands none (RFC 7515 §4.1.11).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The claims Herald reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not valid before this instant (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Clock skew allowed between the minting system and Herald for `nbf`.
pub const NBF_LEEWAY_SECS: i64 = 60;

/// Why a token was refused. Every variant maps to 401; the detail is for logs and messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token uses an unsupported algorithm (HS256 expected)")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token header marks extensions critical (crit), which Herald does not support")]
    Critical,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn sign(secret: &[u8], signing_input: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Mints a token for `user_id` valid until `expires_at`.
pub fn mint(secret: &[u8], user_id: &str, now: DateTime<Utc>, expires_at: DateTime<Utc>) -> String {
    let claims = Claims {
        sub: user_id.to_owned(),
        exp: expires_at.timestamp(),
        iat: Some(now.timestamp()),
        nbf: None,
    };
    let payload = serde_json::to_vec(&claims).expect("claims serialise");
    let input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
    let sig = B64.encode(sign(secret, &input));
    format!("{input}.{sig}")
}

/// Verifies a token and returns its claims.
pub fn verify(secret: &[u8], token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: serde_json::Value = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(TokenError::Algorithm);
    }
    if header.get("crit").is_some() {
        return Err(TokenError::Critical);
    }
    let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&sig).map_err(|_| TokenError::Signature)?;
    let claims: Claims = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if claims.exp <= now.timestamp() {
        return Err(TokenError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.timestamp() + NBF_LEEWAY_SECS)
    {
        return Err(TokenError::NotYetValid);
    }
    if claims.sub.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let now = Utc::now();
        let t = mint(b"secret", "u1", now, now + Duration::hours(1));
        assert_eq!(verify(b"secret", &t, now).unwrap().sub, "u1");
        assert_eq!(
            verify(b"secret", &t, now + Duration::hours(2)),
            Err(TokenError::Expired)
        );
    }

    /// A token with this header and claims, signed with `secret`.
    fn signed(secret: &[u8], header: &str, claims: &str) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        format!("{input}.{}", B64.encode(sign(secret, &input)))
    }

    #[test]
    fn a_token_not_valid_yet_or_with_critical_extensions_is_refused() {
        let now = Utc::now();
        let exp = (now + Duration::hours(1)).timestamp();
        let later = now.timestamp() + 600;
        let t = signed(
            b"s",
            HEADER,
            &format!(r#"{{"sub":"u1","exp":{exp},"nbf":{later}}}"#),
        );
        assert_eq!(verify(b"s", &t, now), Err(TokenError::NotYetValid));
        assert_eq!(
            verify(b"s", &t, now + Duration::minutes(10)).unwrap().sub,
            "u1"
        );
        // Within the leeway: a minting clock a little ahead is fine.
        let skew = now.timestamp() + 30;
        let t = signed(
            b"s",
            HEADER,
            &format!(r#"{{"sub":"u1","exp":{exp},"nbf":{skew}}}"#),
        );
        assert!(verify(b"s", &t, now).is_ok());
        let crit = r#"{"alg":"HS256","typ":"JWT","crit":["b64"],"b64":false}"#;
        let t = signed(b"s", crit, &format!(r#"{{"sub":"u1","exp":{exp}}}"#));
        assert_eq!(verify(b"s", &t, now), Err(TokenError::Critical));
    }

    #[test]
    fn tokens_signed_with_another_secret_or_tampered_are_refused() {
        let now = Utc::now();
        let t = mint(b"secret", "u1", now, now + Duration::hours(1));
        assert_eq!(verify(b"other", &t, now), Err(TokenError::Signature));
        let forged_payload = B64.encode(br#"{"sub":"admin","exp":99999999999}"#);
        let mut parts: Vec<&str> = t.split('.').collect();
        parts[1] = &forged_payload;
        assert_eq!(
            verify(b"secret", &parts.join("."), now),
            Err(TokenError::Signature)
        );
        assert_eq!(verify(b"secret", "abc", now), Err(TokenError::Malformed));
        let none_alg = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), parts[1]);
        assert_eq!(
            verify(b"secret", &none_alg, now),
            Err(TokenError::Algorithm)
        );
    }
}
