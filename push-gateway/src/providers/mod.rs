//! One client per provider API. Each is built from its config section and implements
//! [`crate::provider::Provider`].

pub mod apns;
pub mod email;
pub mod fcm;
pub mod h2;
pub mod oauth;
pub mod sms;
pub mod webhook;

/// APNs ignores `apns-collapse-id` values longer than this (in bytes); FCM's `collapse_key`
/// is held to the same.
const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// The collapse key of a campaign's pushes (APNs `apns-collapse-id`, FCM `collapse_key`): the
/// campaign id, so a push sent again for the same campaign (a revision of its content)
/// replaces the one on the device instead of adding a second.
pub(crate) fn collapse_id(campaign_id: &str) -> &str {
    truncate_utf8(campaign_id, MAX_COLLAPSE_ID_BYTES)
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_ids_are_cut_on_a_character_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let cut = truncate_utf8(&long, MAX_COLLAPSE_ID_BYTES);
        assert_eq!(cut.len(), 64);
        let odd = format!("x{long}");
        assert_eq!(truncate_utf8(&odd, MAX_COLLAPSE_ID_BYTES).len(), 63);
        assert_eq!(truncate_utf8("short", MAX_COLLAPSE_ID_BYTES), "short");
    }
}
