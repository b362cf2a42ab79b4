//! Herald as several processes on shared engines: roles run apart (`api`, `fanout`, two
//! `inbox` nodes) and must behave as one server. Run when `HERALD_TEST_REDIS_URL` is set (the
//! live hub that carries events between the nodes is Redis); skipped otherwise.

#[path = "../support/roles.rs"]
mod roles;

mod cross_node;

pub const ADMIN_KEY: &str = "distributed-admin-key-0123456789";
