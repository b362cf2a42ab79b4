//! Operator reports: what `herald bus lag` prints.

use chrono::{DateTime, Utc};
use herald_core::{topics, Ports, Result};
use serde::Serialize;

/// The backlog of one consumer group on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupLag {
    pub topic: &'static str,
    pub group: &'static str,
    /// Messages published to the topic and not yet acknowledged by the group.
    pub lag: u64,
}

/// What waits in the delay store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DelayBacklog {
    pub waiting: u64,
    /// The earliest due time kept (claimed or not).
    pub next_due: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LagReport {
    pub groups: Vec<GroupLag>,
    pub delays: DelayBacklog,
}

/// Every standard consumer group's lag, and the delay store's backlog.
pub async fn lag(ports: &Ports) -> Result<LagReport> {
    let mut groups = Vec::new();
    for (topic, group) in topics::subscriptions() {
        let lag = ports.bus.depth(topic, group).await?;
        groups.push(GroupLag { topic, group, lag });
    }
    Ok(LagReport {
        groups,
        delays: DelayBacklog {
            waiting: ports.delays.pending().await?,
            next_due: ports.delays.next_due().await?,
        },
    })
}
