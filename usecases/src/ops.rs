//! Operator reports: what `herald bus lag` prints.

use chrono::{DateTime, Utc};
use herald_core::{topics, Ports, Result};
use serde::Serialize;

/// The backlog of one consumer group on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupLag {
    pub topic: String,
    pub group: &'static str,
    /// Messages published to the topic and not yet committed by the group.
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
        let lag = ports.bus.lag(&topic, group).await?;
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

/// How often [`LagGauges`] reads the groups' lag.
const LAG_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Sets `herald_bus_lag{topic, group}` for every standard consumer group every 15 s (the
/// labels are the standard topics and groups only: bounded). Run by the roles that consume
/// the bus.
pub struct LagGauges {
    ports: Ports,
}

impl LagGauges {
    pub fn new(ports: Ports) -> Self {
        Self { ports }
    }
}

#[async_trait::async_trait]
impl herald_core::worker::Worker for LagGauges {
    fn name(&self) -> &'static str {
        "bus-lag"
    }

    async fn step(
        &mut self,
        _shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<herald_core::worker::WorkerState> {
        for (topic, group) in topics::subscriptions() {
            let lag = self.ports.bus.lag(&topic, group).await?;
            let topic = match topic.strip_prefix("deadletter.") {
                Some(t) => format!("deadletter.{}", topics::known(t)),
                None => topics::known(&topic).to_owned(),
            };
            metrics::gauge!("herald_bus_lag", "topic" => topic, "group" => group).set(lag as f64);
        }
        Ok(herald_core::worker::WorkerState::Idle(LAG_EVERY))
    }
}
