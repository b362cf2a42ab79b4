//! Identifiers. Notification ids are derived, not drawn: the same campaign and user always give
//! the same id, so a batch that is redelivered after a crash overwrites its rows instead of
//! duplicating them.
//!
//! A notification id also carries its row's time: its first 48 bits are the row's
//! `created_at` in Unix milliseconds (a UUID v8, laid out like a v7). The id alone is then the
//! row's whole inbox key `(created_at, id)` within the user's inbox, so marking it read or
//! dismissing it is a plain write by primary key on every engine (no lookup by id first, which
//! a wide-column store cannot do cheaply).

use chrono::{DateTime, TimeZone, Utc};
use sha1::{Digest, Sha1};
use uuid::Uuid;

/// The namespace under which notification ids are derived (a fixed random UUID).
const NOTIFICATION_NS: Uuid = Uuid::from_u128(0x6a1f_3c2e_9b0d_4e57_8a61_0c2f_d3b4_e5f6);

/// The deterministic id of `campaign_id`'s notification for `user_id`, whose row is created at
/// `created_at` (which must be whole milliseconds: see [`row_time`]). The first 48 bits hold
/// `created_at`; the other bits come from a name-based hash of campaign and user.
pub fn notification_id(campaign_id: &str, user_id: &str, created_at: DateTime<Utc>) -> Uuid {
    debug_assert_eq!(
        created_at,
        row_time(created_at),
        "a row time in whole milliseconds"
    );
    // The hash of a UUID v5 of the name `campaign \0 user` under the namespace: SHA-1 of the
    // namespace's bytes then the name. Hashed here with the `sha1` crate, which uses the CPU's
    // SHA instructions where it has them (uuid's own v5 is portable code, twice as slow: the
    // hash was 3 % of a push's server CPU, one per recipient). The v5 version and variant bits
    // need not be set: `new_v8` sets its own over the same bits.
    let hash = Sha1::new()
        .chain_update(NOTIFICATION_NS.as_bytes())
        .chain_update(campaign_id.as_bytes())
        .chain_update([0])
        .chain_update(user_id.as_bytes())
        .finalize();
    let ms = created_at.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&hash[6..16]);
    // Sets the version (8) and variant bits over bytes 6 and 8.
    Uuid::new_v8(bytes)
}

/// A time as a notification row stores it: truncated to whole milliseconds, the precision its
/// id carries.
pub fn row_time(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or(t)
}

/// The `created_at` a notification id carries, or `None` for an id that carries none (a
/// broadcast's id, or a row written before ids carried their time).
pub fn time_of(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 8 {
        return None;
    }
    let b = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    Utc.timestamp_millis_opt(u64::from_be_bytes(ms) as i64)
        .single()
}

/// The id of the broadcast a broadcast campaign is stored as: derived, so storing it again
/// after a crash finds the first copy.
pub fn broadcast_id(campaign_id: &str) -> Uuid {
    Uuid::new_v5(
        &NOTIFICATION_NS,
        format!("broadcast\0{campaign_id}").as_bytes(),
    )
}

/// A fresh, time-ordered id (UUID v7) for campaigns, broadcasts and dead letters.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// User, segment and template ids are chosen by clients; they must be short and printable so
/// they fit every backend's key column and URL path.
pub fn validate_key(what: &str, id: &str) -> Result<(), crate::Error> {
    let ok_len = !id.is_empty() && id.len() <= 128;
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':' | b'+'));
    // `.` and `..` are path segments, not names: in a URL they never reach the resource.
    let ok_name = id.bytes().any(|b| b != b'.');
    if ok_len && ok_chars && ok_name {
        Ok(())
    } else {
        Err(crate::Error::invalid(format!(
            "{what} must be 1 to 128 characters of letters, digits and - _ . @ : +, \
             and not only dots"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_names_not_path_segments() {
        assert!(validate_key("user id", "alice.smith").is_ok());
        assert!(validate_key("user id", "a").is_ok());
        for bad in [".", "..", "...", "", "a/b", "a b", "a\n"] {
            assert!(validate_key("user id", bad).is_err(), "{bad:?}");
        }
        assert!(validate_key("user id", &"x".repeat(129)).is_err());
    }

    #[test]
    fn notification_ids_are_stable_and_distinct_per_campaign_and_user() {
        let t = row_time(Utc::now());
        let id = |c: &str, u: &str| notification_id(c, u, t);
        assert_eq!(id("c1", "u1"), id("c1", "u1"));
        assert_ne!(id("c1", "u1"), id("c1", "u2"));
        assert_ne!(id("c1", "u1"), id("c2", "u1"));
        // The separator keeps ("c1", "1u") and ("c11", "u") apart.
        assert_ne!(id("c1", "1u"), id("c11", "u"));
    }

    /// The ids of rows written by earlier releases (which hashed with `Uuid::new_v5`) are
    /// derived the same: a batch redelivered across an upgrade overwrites its rows.
    #[test]
    fn notification_ids_are_the_ones_earlier_releases_derived() {
        let earlier = |c: &str, u: &str, t: DateTime<Utc>| {
            let name = format!("{c}\0{u}");
            let hash = Uuid::new_v5(&NOTIFICATION_NS, name.as_bytes()).into_bytes();
            let mut bytes = [0u8; 16];
            bytes[..6].copy_from_slice(&(t.timestamp_millis() as u64).to_be_bytes()[2..]);
            bytes[6..].copy_from_slice(&hash[6..]);
            Uuid::new_v8(bytes)
        };
        let t = row_time(Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap());
        for (c, u) in [
            ("01a24092-f8f9-72e0-a488-c5ff50670b28", "user-00000001"),
            ("c", ""),
            ("", "u"),
            ("campaign", &"u".repeat(128)),
            ("é", "ünïcode"),
        ] {
            assert_eq!(notification_id(c, u, t), earlier(c, u, t), "{c:?} {u:?}");
        }
        // Pinned, so a change of both derivations at once shows too.
        assert_eq!(
            notification_id("c1", "u1", t).to_string(),
            "01a2407f-1500-813a-87c6-1e5a64954fb2"
        );
    }

    #[test]
    fn a_notification_id_carries_its_row_time_and_other_ids_carry_none() {
        let t = row_time(
            Utc.with_ymd_and_hms(2026, 11, 30, 3, 4, 5).unwrap()
                + chrono::TimeDelta::microseconds(678_901),
        );
        assert_eq!(t.timestamp_subsec_micros(), 678_000);
        let id = notification_id("c1", "u1", t);
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(time_of(id), Some(t));
        // Ids of rows created later sort later, as the inbox key does.
        let later = notification_id("c0", "u0", t + chrono::TimeDelta::milliseconds(1));
        assert!(later > id);
        assert_eq!(time_of(broadcast_id("c1")), None);
        assert_eq!(time_of(new_id()), None);
    }

    #[test]
    fn keys_with_spaces_slashes_or_no_characters_are_rejected() {
        assert!(validate_key("user id", "u-1_a.b@c:d+e").is_ok());
        assert!(validate_key("user id", "").is_err());
        assert!(validate_key("user id", "a b").is_err());
        assert!(validate_key("user id", "a/b").is_err());
        assert!(validate_key("user id", &"x".repeat(129)).is_err());
    }
}
