//! Every metric Herald exports, with its type, unit and help text: described to the recorder
//! once at start (`describe`), so `/metrics` carries `# HELP` and `# TYPE` for each (what
//! `promtool check metrics` asks for). Labels are bounded everywhere: channel, provider,
//! result, outcome, strategy, stage, worker, route template, status, topic and group; never a
//! user, campaign or message id. A test keeps this list and the code's metrics the same.

use metrics::Unit;

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

/// `(kind, name, help)` of every metric. Histograms ending in `_seconds` are in seconds.
pub const CATALOG: &[(Kind, &str, &str)] = &[
    (Counter, "herald_broadcast_cache_mirror_failures_total", "Broadcast writes that reached the broadcast store but not the Redis broadcast cache (which is then rebuilt)."),
    (Counter, "herald_broadcast_cache_rebuilds_total", "Rebuilds of the Redis set of open broadcasts from the broadcast store."),
    (Counter, "herald_broadcasts_activated_total", "Broadcasts that became active (shown in inboxes)."),
    (Counter, "herald_broadcasts_completed_total", "Broadcasts that ended (expired or cancelled)."),
    (Counter, "herald_bus_committed_total", "Bus messages a consumer group finished with (its throughput), by topic and group."),
    (Counter, "herald_bus_dead_letters_total", "Bus messages set aside after a consumer failed them on every attempt, by topic."),
    (Gauge, "herald_bus_lag", "Messages published on a topic and not yet committed by a consumer group."),
    (Counter, "herald_campaigns_cancelled_total", "Campaigns cancelled through the API."),
    (Counter, "herald_campaigns_retracted_total", "Campaigns retracted from their recipients (`DELETE /v1/campaigns/{id}/notifications`)."),
    (Counter, "herald_campaigns_revised_total", "Changes of a campaign's content after it was created (`PATCH /v1/campaigns/{id}/content`)."),
    (Counter, "herald_campaigns_created_total", "Campaigns created, by strategy."),
    (Histogram, "herald_delay_lateness_seconds", "How long after it came due a delayed message (retry, quiet hours) was published."),
    (Gauge, "herald_delay_pending", "Messages waiting in the delay store."),
    (Counter, "herald_delay_published_total", "Delayed messages published once due."),
    (Counter, "herald_devices_imported_total", "Devices registered by bulk import."),
    (Counter, "herald_digests_dropped_total", "Due digests not sent because their rule or its template is gone."),
    (Counter, "herald_digests_sent_total", "Digests sent as one notification when their window ended."),
    (Counter, "herald_events_total", "Events received, by whether a rule matched (true, false, duplicate, digested)."),
    (Counter, "herald_fanout_backpressure_waits_total", "Times the batcher waited for the channel queues to drain before cutting more batches."),
    (Counter, "herald_fanout_batch_failures_total", "Fan-out batch attempts that failed and will be tried again."),
    (Histogram, "herald_fanout_batch_seconds", "Time to process one fan-out batch."),
    (Counter, "herald_fanout_batches_given_up_total", "Fan-out batches given up after their attempts (replayable from the API)."),
    (Counter, "herald_fanout_batches_published_total", "Fan-out batches cut and published on the bus."),
    (Gauge, "herald_fanout_campaigns_cutting", "Campaigns whose batches this process is cutting."),
    (Counter, "herald_fanout_notifications_written_total", "Inbox rows written by fan-out."),
    (Gauge, "herald_fanout_pace_users_per_second", "The batcher's current pace, by strategy."),
    (Counter, "herald_fanout_presence_failures_total", "Presence lookups for `push_when: offline` that failed (everyone was pushed to)."),
    (Counter, "herald_fanout_push_suppressed_online_total", "Pushes not sent because the recipient had a live inbox socket (`push_when: offline`)."),
    (Histogram, "herald_fanout_stage_seconds", "Time per stage of a fan-out batch, by stage."),
    (Counter, "herald_fanout_users_total", "Users processed by fan-out batches."),
    (Histogram, "herald_http_request_duration_seconds", "HTTP request latency, by method, route template and status."),
    (Counter, "herald_http_requests_total", "HTTP requests, by method, route template and status."),
    (Counter, "herald_inbox_broadcast_cache_reloads_total", "Reloads of the inbox node's list of open broadcasts."),
    (Counter, "herald_inbox_bulk_actions_total", "Bulk state changes (`POST /v1/inbox/bulk`) by action (seen, read, archive, unarchive)."),
    (Counter, "herald_inbox_reads_total", "Inbox pages read."),
    (Counter, "herald_inbox_rows_purged_total", "Inbox rows deleted past their retention."),
    (Gauge, "herald_live_connections", "Live-feed WebSockets open on this node."),
    (Counter, "herald_live_events_received_total", "Live events this node's hub subscription received."),
    (Counter, "herald_live_frames_sent_total", "Frames written to live-feed sockets."),
    (Counter, "herald_live_slow_consumers_closed_total", "Live-feed sockets closed for falling too far behind."),
    (Gauge, "herald_live_users_followed", "Users this node follows on the live hub (users with a socket here)."),
    (Counter, "herald_push_after_send_retries_total", "Writes following a channel message's sends (next attempt, dead letter, report, processed mark) retried while their engine was unavailable."),
    (Counter, "herald_push_claims_lost_total", "Channel messages whose delivery claim ran out while they were being sent."),
    (Counter, "herald_push_deliveries_total", "Sends by channel and result (sent, failed, retried, dead_lettered, invalid_token, suppressed_online, cancelled, ...)."),
    (Counter, "herald_push_duplicate_messages_total", "Channel messages skipped as already delivered."),
    (Histogram, "herald_push_group_size", "Sends per provider request group, by provider."),
    (Counter, "herald_push_held_copies_total", "Copies of a channel message held in the delay store while another copy holds its claim."),
    (Histogram, "herald_push_message_seconds", "Time to handle one channel message, by channel."),
    (Histogram, "herald_push_request_seconds", "Provider request latency, by provider and outcome."),
    (Counter, "herald_push_sends_deferred_at_shutdown_total", "Sends not handed to the provider because the gateway was stopping, sent by the message's next attempt instead, by provider."),
    (Counter, "herald_push_stale_tokens_removed_total", "Device tokens removed for not being used for too long."),
    (Counter, "herald_push_throttle_fallbacks_total", "Provider rate limit reservations made in-process because the shared throttle did not answer, by provider."),
    (Counter, "herald_push_undecodable_messages_total", "Channel messages that could not be decoded (set aside)."),
    (Counter, "herald_storage_connections_closed_in_transaction_total", "Pooled connections closed because they came back inside a transaction."),
    (Counter, "herald_storage_mysql_retries_total", "MySQL transactions run again after a deadlock or lock wait timeout."),
    (Counter, "herald_storage_read_only_connections_closed_total", "Pooled SQLite connections closed because they could no longer write."),
    (Gauge, "herald_storage_sqlite_memory_bytes", "Bytes SQLite holds in this process (page caches, prepared statements, sorters), read at each scrape."),
    (Counter, "herald_users_imported_total", "Users written by bulk import."),
    (Counter, "herald_worker_errors_total", "Errors of background workers, by worker."),
    (Gauge, "herald_worker_failing", "1 while a background worker keeps failing, by worker."),
    (Counter, "herald_worker_panics_total", "Panics of background worker tasks (the task is restarted)."),
];

/// Describes every metric of [`CATALOG`] to the installed recorder.
pub fn describe() {
    for &(kind, name, help) in CATALOG {
        match kind {
            Counter => metrics::describe_counter!(name, Unit::Count, help),
            Gauge => metrics::describe_gauge!(name, help),
            Histogram if name.ends_with("_seconds") => {
                metrics::describe_histogram!(name, Unit::Seconds, help)
            }
            Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Gauges read from their source when `/metrics` is scraped rather than kept up to date (a
/// store's memory): each hook sets its own gauges.
static SCRAPE_HOOKS: std::sync::Mutex<Vec<fn()>> = std::sync::Mutex::new(Vec::new());

/// Runs `hook` before every scrape of this process's metrics (register it once).
pub fn on_scrape(hook: fn()) {
    SCRAPE_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(hook);
}

/// Runs the hooks of [`on_scrape`]; the metrics endpoint calls it before it renders.
pub fn before_scrape() {
    let hooks = SCRAPE_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for hook in hooks {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }

    /// Every metric a library crate records is in the catalog, once, and every catalog entry
    /// is recorded somewhere: a metric added without its help text fails here.
    #[test]
    fn the_catalog_and_the_metrics_the_code_records_are_the_same() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut code = String::new();
        for krate in [
            "core",
            "storage",
            "http",
            "usecases",
            "api",
            "fanout-worker",
            "inbox",
            "push-gateway",
            "src",
        ] {
            let dir = if krate == "src" {
                root.join("src")
            } else {
                root.join(krate).join("src")
            };
            sources(&dir, &mut code);
        }
        // A metric name as the first argument of a metrics macro.
        let mut recorded = BTreeSet::new();
        for (i, _) in code.match_indices("\"herald_") {
            let before = code[..i].trim_end();
            let name: String = code[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let is_macro_arg = ["counter!(", "gauge!(", "histogram!("]
                .iter()
                .any(|m| before.ends_with(m));
            if is_macro_arg {
                recorded.insert(name);
            }
        }
        let catalog: BTreeSet<String> = CATALOG.iter().map(|(_, n, _)| n.to_string()).collect();
        assert_eq!(catalog.len(), CATALOG.len(), "a metric is listed twice");
        let missing: Vec<_> = recorded.difference(&catalog).collect();
        let unused: Vec<_> = catalog.difference(&recorded).collect();
        assert!(
            missing.is_empty(),
            "recorded without a catalog entry: {missing:?}"
        );
        assert!(
            unused.is_empty(),
            "in the catalog, recorded nowhere: {unused:?}"
        );
        for (kind, name, help) in CATALOG {
            assert!(!help.is_empty() && help.ends_with('.'), "{name}: {help}");
            match kind {
                Counter => assert!(name.ends_with("_total"), "{name}"),
                Gauge => assert!(!name.ends_with("_total"), "{name}"),
                Histogram => {}
            }
        }
    }
}
