//! Herald's inbox role (DESIGN.md flows 4–5): the merged inbox over HTTP (personal rows plus
//! the active broadcasts that match the user, minus dismissals, keyset-paged) and the WebSocket
//! live feed with gap-free resume.
//!
//! It reads through the ports of `herald_core::Context` and shares HTTP plumbing with
//! `herald_api::http`; it never writes campaigns or talks to push providers.
//!
//! Filled by issues #4 (inbox) and #5 (live feed).
