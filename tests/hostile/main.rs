//! Hostile input and faults against the real roles: the server stays up, answers clearly and
//! loses nothing. Shares the harness of the correctness suite.

#[path = "../correctness/harness.rs"]
#[allow(dead_code)]
mod harness;

#[path = "../support/roles.rs"]
mod roles;
pub use harness::ADMIN_KEY;

#[path = "../../storage/tests/support/mysql.rs"]
mod mysql_support;
#[path = "../../storage/tests/support/small_disk.rs"]
mod small_disk;

mod aborted_requests;
mod faults;
mod limits;
mod templates;
