//! Cursors are opaque to clients and come back forged: the inbox cursor and the admin list
//! cursors either decode to a key or are refused, never panicking; a decoded inbox cursor
//! encodes back to the same key.
#![no_main]

use herald_api::pages::PageParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = herald_inbox::cursor::decode(text) {
        let again = herald_inbox::cursor::encode(&key);
        assert_eq!(herald_inbox::cursor::decode(&again), Some(key));
    }
    let _ = PageParams::keyset(Some(10), Some(text.to_owned()));
    let _ = PageParams::id_keyset(Some(10), Some(text.to_owned()));
});
