//! Nothing lost, nothing twice, never wedged: the delivery contracts that cross crates and
//! processes, driven end to end through the real roles (admin API, fan-out, push gateway with
//! fake providers over loopback) on the embedded backends. Each module is one defect class
//! that once passed every per-crate test.

mod harness;
#[path = "../../storage/tests/support/mysql.rs"]
mod mysql_support;
#[path = "../../push-gateway/tests/support/smtp_sink.rs"]
mod smtp_sink;

mod analytics;
mod content;
mod explain;
mod idempotency;
mod ownership;
mod quiet_hours;
mod split_roles;
mod supervision;
