//! Inbox cursors: the opaque, URL-safe form of an [`InboxKey`].
//!
//! A cursor names a position in a user's inbox, which is ordered newest first by
//! `(created_at, id)` for personal and broadcast items alike (a broadcast's `created_at` is its
//! `starts_at`). `GET /v1/inbox?cursor=` returns the items strictly older than it, and the live
//! feed's `since=` (issue #5) the items strictly newer, so the same value works for both.
//!
//! Layout (then base64url without padding): a version byte (`1`), the seconds of `created_at`
//! since the epoch (i64, big endian), its nanoseconds (u32, big endian) and the 16 bytes of the
//! id: 29 bytes, 39 characters. Clients must treat it as opaque.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::DateTime;
use herald_core::model::InboxKey;
use uuid::Uuid;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 4 + 16;

/// The cursor of the item at `key`.
pub fn encode(key: &InboxKey) -> String {
    let mut buf = [0u8; LEN];
    buf[0] = VERSION;
    buf[1..9].copy_from_slice(&key.created_at.timestamp().to_be_bytes());
    buf[9..13].copy_from_slice(&key.created_at.timestamp_subsec_nanos().to_be_bytes());
    buf[13..].copy_from_slice(key.id.as_bytes());
    B64.encode(buf)
}

/// The key a cursor names, or `None` if `cursor` is not one this module produced.
pub fn decode(cursor: &str) -> Option<InboxKey> {
    // Longer input cannot be a cursor; refuse it before decoding anything.
    if cursor.len() > 64 {
        return None;
    }
    let bytes = B64.decode(cursor).ok()?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return None;
    }
    let secs = i64::from_be_bytes(bytes[1..9].try_into().ok()?);
    let nanos = u32::from_be_bytes(bytes[9..13].try_into().ok()?);
    if nanos >= 1_000_000_000 {
        return None;
    }
    let created_at = DateTime::from_timestamp(secs, nanos)?;
    let id = Uuid::from_slice(&bytes[13..]).ok()?;
    Some(InboxKey { created_at, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn a_cursor_round_trips_to_the_same_key() {
        let key = InboxKey {
            created_at: Utc::now(),
            id: Uuid::now_v7(),
        };
        let c = encode(&key);
        assert_eq!(c.len(), 39);
        assert!(c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode(&c), Some(key));
        let old = InboxKey {
            created_at: DateTime::from_timestamp(-86_400, 5).unwrap(),
            id: Uuid::nil(),
        };
        assert_eq!(decode(&encode(&old)), Some(old));
    }

    #[test]
    fn anything_else_is_not_a_cursor() {
        let key = InboxKey {
            created_at: Utc::now(),
            id: Uuid::now_v7(),
        };
        let good = encode(&key);
        assert_eq!(decode(""), None);
        assert_eq!(decode("not a cursor"), None);
        assert_eq!(decode(&good[..good.len() - 1]), None);
        assert_eq!(decode(&format!("{good}AA")), None);
        assert_eq!(decode(&"A".repeat(1000)), None);
        let mut wrong_version = B64.decode(&good).unwrap();
        wrong_version[0] = 2;
        assert_eq!(decode(&B64.encode(&wrong_version)), None);
        let mut bad_nanos = B64.decode(&good).unwrap();
        bad_nanos[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&B64.encode(&bad_nanos)), None);
    }
}
