//! One NDJSON line of a user import: a user that passes validation, or an error with a status
//! (400 or 422); never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match herald_api::parse_import_line(data, chrono::Utc::now()) {
        Ok(user) => {
            herald_core::ids::validate_key("user id", &user.id).expect("a validated id");
        }
        Err(e) => {
            let status = e.status().as_u16();
            assert!(status == 400 || status == 422, "{status}: {e}");
        }
    }
});
