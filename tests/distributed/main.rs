//! Herald as several processes on shared engines: roles run apart (`api`, `fanout`, two
//! `inbox` nodes) and must behave as one server. Run when `HERALD_TEST_REDIS_URL` is set (the
//! live hub that carries events between the nodes is Redis); skipped otherwise. With
//! `HERALD_TEST_MYSQL_URL` the stores are on MySQL (a database of the test's own), with
//! `HERALD_TEST_NATS_URL` the bus is on JetStream; else both are SQLite files the processes
//! share.

#[path = "../support/live_client.rs"]
mod live_client;
#[path = "../support/roles.rs"]
mod roles;

#[path = "../../storage/tests/support/mysql.rs"]
mod mysql_support;

mod cross_node;
mod digests;
mod inbox_states;
mod outages;
mod presence;
mod retractions;

pub const ADMIN_KEY: &str = "distributed-admin-key-0123456789";
