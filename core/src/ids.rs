//! Identifiers. Notification ids are derived, not drawn: the same campaign and user always give
//! the same id, so a batch that is redelivered after a crash overwrites its rows instead of
//! duplicating them.

use uuid::Uuid;

/// The namespace under which notification ids are derived (a fixed random UUID).
const NOTIFICATION_NS: Uuid = Uuid::from_u128(0x6a1f_3c2e_9b0d_4e57_8a61_0c2f_d3b4_e5f6);

/// The deterministic id of `campaign_id`'s notification for `user_id`.
pub fn notification_id(campaign_id: &str, user_id: &str) -> Uuid {
    let mut name = Vec::with_capacity(campaign_id.len() + 1 + user_id.len());
    name.extend_from_slice(campaign_id.as_bytes());
    name.push(0);
    name.extend_from_slice(user_id.as_bytes());
    Uuid::new_v5(&NOTIFICATION_NS, &name)
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
        assert_eq!(notification_id("c1", "u1"), notification_id("c1", "u1"));
        assert_ne!(notification_id("c1", "u1"), notification_id("c1", "u2"));
        assert_ne!(notification_id("c1", "u1"), notification_id("c2", "u1"));
        // The separator keeps ("c1", "1u") and ("c11", "u") apart.
        assert_ne!(notification_id("c1", "1u"), notification_id("c11", "u"));
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
