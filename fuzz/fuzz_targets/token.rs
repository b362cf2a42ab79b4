//! Inbox tokens come from anyone: any text is refused unless it is an HS256 token signed with
//! the secret, and verifying never panics.
#![no_main]

use herald_core::token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = chrono::Utc::now();
    if let Ok(claims) = token::verify(b"fuzz-secret-0123456789abcdef0123456789", text, now) {
        // Only a token signed with the secret verifies; the fuzzer cannot forge one.
        panic!("a forged token verified: {claims:?}");
    }
});
