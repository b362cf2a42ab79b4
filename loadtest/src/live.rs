//! Scenario `live`: N WebSockets on `GET /v1/inbox/live`, the server's memory per socket, and
//! how long a broadcast to `all` takes to reach every one of them.
//!
//! Steps: raise RLIMIT_NOFILE; mint N inbox tokens (bounded concurrency); open N sockets, each
//! bound to a source address cycling through 127.0.0.2, 127.0.0.3, … so that N can pass the
//! ~28K ephemeral ports of one source address; read the server's VmRSS before and after; send
//! `--broadcasts` campaigns to `all` and time, from the moment each POST returns 202, the
//! arrival of its notification frame on every socket; close every socket with a close
//! handshake; return a report with a summary table and one row per broadcast.
//!
//! Each socket lives in one small task that opens it (under a semaphore), then reads frames:
//! reading is what answers the server's pings (tungstenite queues the pong and flushes it on
//! the next read). A notification whose title carries this run's marker is sent, with the
//! time it was read (`CLOCK_MONOTONIC`), to the collector over an unbounded channel.
//!
//! Many nodes, many client processes: `--inbox-url` (repeated) spreads the sockets over
//! several inbox nodes (socket i to node i modulo their number; tokens and broadcasts still go
//! through `--url`), `--server-pid` (repeated) sums their RSS, and `--workers W` holds the
//! sockets in W child processes (`herald-loadtest live-worker`, each with a descriptor limit of
//! its own: one process may hold about 20,000 here). A worker reads its share of the tokens
//! and the nodes as one JSON line on stdin, and reports each socket's open result, each
//! arrival (with its `CLOCK_MONOTONIC` time, one clock for every process of the machine) and
//! each early end as JSON lines on stdout; `close` on stdin makes it close its sockets, report
//! how they closed, and exit.

use crate::report::{Report, Table};
use crate::stats::{self, LatencySummary, SpectrumPoint};
use anyhow::{bail, Context};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Options of `live`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct LiveOpts {
    /// Sockets to open, one per user.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    #[arg(long, default_value = "user")]
    pub prefix: String,
    /// Users are spread over `prefix-i` for i below this (default: --connections, i.e.
    /// the first N seeded users).
    #[arg(long)]
    pub population: Option<u64>,
    /// Client source addresses 127.0.0.2, 127.0.0.3, … to cycle through (each gives about
    /// 28K ephemeral ports); 0 lets the kernel pick.
    #[arg(long, default_value_t = 8)]
    pub source_addrs: u8,
    /// Broadcasts to send, one after the other.
    #[arg(long, default_value_t = 3)]
    pub broadcasts: u32,
    /// The server processes' ids (repeat the option for several nodes), to read their VmRSS
    /// before and after the sockets open.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Inbox nodes the sockets are spread over (repeat the option); default: `--url`.
    #[arg(long = "inbox-url")]
    pub inbox_urls: Vec<String>,
    /// Client processes holding the sockets (children running `live-worker`); 0 keeps them
    /// in this process.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
    /// The executable the workers run (default: this one; tests name the built binary).
    #[arg(long, hide = true)]
    pub worker_exe: Option<std::path::PathBuf>,
    /// Sockets being opened at once.
    #[arg(long, default_value_t = 256)]
    pub open_concurrency: usize,
    /// Token requests in flight.
    #[arg(long, default_value_t = 64)]
    pub mint_concurrency: usize,
    /// Most seconds to wait for a broadcast to reach every socket.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
}

/// File descriptors kept aside for everything but the sockets (HTTP pool, stdio, runtime).
const FD_MARGIN: u64 = 256;
/// Each socket's read buffer: the client reads a few small frames, and N of them must fit.
const READ_BUFFER: usize = 4 * 1024;
/// Give up on one socket's TCP connect plus WebSocket handshake after this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the close handshake of all sockets may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress lines every this many tokens or sockets.
const PROGRESS_EVERY: u64 = 10_000;

/// One notification of this run read by one socket, at [`mono_ns`].
struct Arrival {
    broadcast: u32,
    conn: u32,
    at: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine, so a
/// worker's arrival times and the driver's 202 can be compared.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the socket tasks share with the driver.
struct Shared {
    /// Titles of this run's broadcasts start with this; the broadcast's number follows.
    marker: String,
    arrivals: mpsc::UnboundedSender<Arrival>,
    /// Text frames that were not one of this run's notifications.
    other_frames: AtomicU64,
    /// Sockets that ended before we closed them, by reason.
    ended_early: Mutex<HashMap<String, u64>>,
    /// Sockets whose close handshake, started by us, completed.
    closed_clean: AtomicU64,
    /// Sockets that ended some other way once we started closing.
    closed_unclean: AtomicU64,
    /// In a worker: where early endings are reported to the driver as they happen.
    forward: Option<mpsc::UnboundedSender<WorkerEvent>>,
}

impl Shared {
    fn on_text(&self, conn: u32, text: &str) {
        let at = mono_ns();
        let broadcast = serde_json::from_str::<Value>(text).ok().and_then(|v| {
            if v["type"] != "notification" {
                return None;
            }
            v["item"]["title"]
                .as_str()?
                .strip_prefix(self.marker.as_str())?
                .parse::<u32>()
                .ok()
        });
        match broadcast {
            Some(broadcast) => {
                let _ = self.arrivals.send(Arrival {
                    broadcast,
                    conn,
                    at,
                });
            }
            None => {
                self.other_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The early endings by reason. A task that panicked while holding the lock poisoned it;
    /// the counts are still good, so read through the poison.
    fn ended_early_counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.ended_early
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ended_early(&self, why: String) {
        if let Some(forward) = &self.forward {
            let _ = forward.send(WorkerEvent::Early {
                reason: why.clone(),
            });
        }
        *self.ended_early_counts().entry(why).or_default() += 1;
    }

    fn ended_early_total(&self) -> u64 {
        self.ended_early_counts().values().sum()
    }
}

/// What one broadcast measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BroadcastFigures {
    index: u32,
    campaign_id: String,
    strategy: String,
    /// The create request, from its start to the 202.
    post_ms: f64,
    /// Sockets that read it within the wait, each counted once.
    received: u64,
    /// Sockets open when it was sent.
    expected: u64,
    /// Sockets that read it before the 202 came back (latency 0 for them).
    before_202: u64,
    /// From the 202 to the frame's read on each socket.
    latency_ms: LatencySummary,
    latency_spectrum: Vec<SpectrumPoint>,
    /// The last socket's read, from the 202 and from the start of the create request.
    last_ms: Option<f64>,
    last_from_post_start_ms: Option<f64>,
}

/// Opens `o.connections` WebSockets, sends `o.broadcasts` broadcasts and times their arrival.
pub async fn live(url: &str, key: &str, o: &LiveOpts) -> anyhow::Result<Report> {
    let mut report = Report::new("live", url, o);
    let run_started = Instant::now();
    let n = o.connections;
    if n == 0 {
        bail!("--connections must be at least 1");
    }
    if o.source_addrs > 250 {
        bail!("--source-addrs is at most 250 (127.0.0.2 … 127.0.0.251)");
    }
    let population = o.population.unwrap_or(n);
    if population < n {
        bail!("--population {population} is smaller than --connections {n}: each socket needs its own user");
    }

    // 1. File descriptors (with workers, theirs: this process only mints and sends).
    let sockets_here = if o.workers > 0 { 0 } else { n };
    let needed = sockets_here + FD_MARGIN + o.mint_concurrency as u64;
    let (fd_before, fd_now) = raise_nofile(needed)?;
    let nofile = if fd_now > fd_before {
        format!("RLIMIT_NOFILE: soft limit raised from {fd_before} to the hard limit {fd_now} (needs {needed} = {sockets_here} sockets here + {FD_MARGIN} + token requests)")
    } else {
        format!("RLIMIT_NOFILE: soft limit already at the hard limit {fd_now} (needs {needed} = {sockets_here} sockets here + {FD_MARGIN} + token requests)")
    };
    eprintln!("{nofile}");
    report.note(nofile);

    // The server, its address, and whether the source addresses can carry N sockets.
    let base = reqwest::Url::parse(url).context("--url")?;
    let host = base.host_str().context("--url has no host")?.to_owned();
    let port = base.port_or_known_default().context("--url has no port")?;
    let server = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    let sources: Vec<IpAddr> = (0..o.source_addrs)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
        .collect();
    if !sources.is_empty() && !server.is_ipv4() {
        bail!("--source-addrs binds IPv4 loopback addresses, but {host} is {server}: use an IPv4 --url or --source-addrs 0");
    }
    let ports = ephemeral_ports();
    let capacity = ports * (sources.len() as u64).max(1);
    if n > capacity {
        let warning = format!(
            "warning: {n} sockets but only about {capacity} ephemeral ports ({ports} per source address × {}): raise --source-addrs",
            sources.len().max(1)
        );
        eprintln!("{warning}");
        report.note(warning);
    }
    let _ = server;
    // The inbox nodes: (WebSocket URL up to the token, address to connect to).
    let node_urls: Vec<&str> = if o.inbox_urls.is_empty() {
        vec![url]
    } else {
        o.inbox_urls.iter().map(String::as_str).collect()
    };
    let mut nodes: Vec<(String, SocketAddr)> = Vec::new();
    for node in &node_urls {
        let base = reqwest::Url::parse(node).with_context(|| format!("inbox URL {node}"))?;
        crate::check_target(node)?;
        let host = base
            .host_str()
            .context("an inbox URL has no host")?
            .to_owned();
        let port = base
            .port_or_known_default()
            .context("an inbox URL has no port")?;
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to nothing"))?;
        if !sources.is_empty() && !addr.is_ipv4() {
            bail!("--source-addrs binds IPv4 loopback addresses, but {host} is {addr}: use IPv4 URLs or --source-addrs 0");
        }
        nodes.push((
            format!(
                "ws://{addr}{}/v1/inbox/live?token=",
                base.path().trim_end_matches('/')
            ),
            addr,
        ));
    }
    let ws_base = nodes
        .iter()
        .map(|(ws, _)| ws.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let per_node = n.div_ceil(nodes.len() as u64);
    let server_pids: Vec<String> = o.server_pids.iter().map(u32::to_string).collect();
    let server_pid = (!server_pids.is_empty()).then(|| server_pids.join(", "));
    for pid in &server_pids {
        match server_nofile(pid) {
            Some(limit) if limit < per_node + 64 => {
                let warning = format!(
                    "warning: the server (pid {pid}) may open only {limit} files, fewer than its {per_node} sockets: \
                     start it under a higher `ulimit -n`"
                );
                eprintln!("{warning}");
                report.note(warning);
            }
            Some(_) => {}
            None => bail!("--server-pid {pid}: no such process readable in /proc"),
        }
    }

    // 2. Tokens.
    let ids = crate::spread_ids(&o.prefix, n, population);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.mint_concurrency.max(1))
        .build()?;
    let minted_at = Instant::now();
    let tokens = mint_tokens(&client, url, key, &ids, o.mint_concurrency.max(1)).await?;
    let mint_secs = minted_at.elapsed().as_secs_f64();
    eprintln!(
        "minted {} tokens in {mint_secs:.2} s ({:.0}/s, {} in flight)",
        tokens.len(),
        stats::per_second(tokens.len() as u64, mint_secs),
        o.mint_concurrency.max(1)
    );
    drop(ids);

    // 3. Sockets (with the server's RSS around them: 4).
    let rss_before = total_rss_kib(&server_pids);
    let self_before = vm_rss_kib("self");
    let run_id = format!(
        "{:08x}-{}",
        rand::random::<u32>(),
        chrono::Utc::now().format("%H%M%S")
    );
    let (arrival_tx, mut arrivals) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        marker: format!("loadtest-live {run_id} #"),
        arrivals: arrival_tx,
        other_frames: AtomicU64::new(0),
        ended_early: Mutex::new(HashMap::new()),
        closed_clean: AtomicU64::new(0),
        closed_unclean: AtomicU64::new(0),
        forward: None,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let slots = Arc::new(Semaphore::new(o.open_concurrency.max(1)));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    eprintln!(
        "opening {n} WebSockets to {ws_base}… ({} in flight, source addresses {})",
        o.open_concurrency.max(1),
        describe_sources(&sources)
    );
    let open_started = Instant::now();
    let mut tasks = Vec::with_capacity(tokens.len());
    let mut worker_stdins = Vec::new();
    let tokens = if o.workers > 0 {
        let (handles, stdins) =
            start_workers(o, &nodes, &sources, tokens, &shared, &open_tx).await?;
        tasks = handles;
        worker_stdins = stdins;
        Vec::new()
    } else {
        tokens
    };
    for (i, token) in tokens.into_iter().enumerate() {
        let (ws_base, server) = nodes[i % nodes.len()].clone();
        let slots = slots.clone();
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let url = format!("{ws_base}{token}");
        let shared = shared.clone();
        let stop = stop_rx.clone();
        let open_tx = open_tx.clone();
        tasks.push(tokio::spawn(async move {
            // The semaphore is fair: sockets open in order, `open_concurrency` at a time.
            let Ok(permit) = slots.acquire_owned().await else {
                return;
            };
            let opened = match tokio::time::timeout(
                OPEN_TIMEOUT,
                open(url, source, server, ws_config),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {} s", OPEN_TIMEOUT.as_secs())),
            };
            drop(permit);
            let _ = open_tx.send(opened.as_ref().map(|_| ()).map_err(Clone::clone));
            drop(open_tx);
            let Ok(ws) = opened else {
                return;
            };
            socket(i as u32, ws, &shared, stop).await;
        }));
    }
    drop(open_tx);
    let mut established = 0u64;
    let mut open_failures: HashMap<String, u64> = HashMap::new();
    let mut done = 0u64;
    let mut next_progress = PROGRESS_EVERY;
    // Each task holds a sender for its whole life: count the results rather than wait for
    // the channel to close.
    while done < n {
        let Some(r) = opened_rx.recv().await else {
            break;
        };
        match r {
            Ok(()) => established += 1,
            Err(e) => *open_failures.entry(e).or_default() += 1,
        }
        done += 1;
        if done == next_progress && done < n {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "  {done:>8} / {n} sockets attempted ({established} open) after {:.1} s",
                open_started.elapsed().as_secs_f64()
            );
        }
    }
    let open_secs = open_started.elapsed().as_secs_f64();
    let failed = n - established;
    eprintln!(
        "sockets: {established} established, {failed} failed, in {open_secs:.2} s ({:.0}/s)",
        stats::per_second(established, open_secs)
    );
    for line in top_counts(&open_failures) {
        eprintln!("  open failure: {line}");
        report.note(format!("open failure: {line}"));
    }
    // Let the server finish registering the last sockets before its memory is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = total_rss_kib(&server_pids);
    let self_after = vm_rss_kib("self");
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if established > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / established as f64)
        }
        _ => None,
    };
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        eprintln!(
            "server RSS: {} before, {} after {established} sockets = {} per socket",
            kib(b),
            kib(a),
            per_conn.map_or("?".into(), bytes)
        );
    }

    // 5. Broadcasts.
    let mut sent = Vec::new();
    let outcome = broadcasts(
        &client,
        url,
        key,
        o,
        &shared,
        &mut arrivals,
        established,
        &mut sent,
    )
    .await;

    // Close every socket: a close frame, then read until the server's close and EOF.
    let early = shared.ended_early_total();
    let closing = Instant::now();
    let _ = stop_tx.send(true);
    for mut stdin in worker_stdins {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(b"close\n").await;
    }
    let all_closed = tokio::time::timeout(CLOSE_TIMEOUT, futures::future::join_all(tasks))
        .await
        .is_ok();
    let close_secs = closing.elapsed().as_secs_f64();
    let clean = shared.closed_clean.load(Ordering::Relaxed);
    let unclean = shared.closed_unclean.load(Ordering::Relaxed);
    eprintln!(
        "closed: {clean} with a clean close handshake, {unclean} otherwise, in {close_secs:.2} s"
    );
    if !all_closed {
        report.note(format!(
            "gave up waiting for the close handshakes after {} s (the rest were dropped)",
            CLOSE_TIMEOUT.as_secs()
        ));
    }
    if early > 0 {
        for line in top_counts(&shared.ended_early_counts()) {
            report.note(format!("ended before the close: {line}"));
        }
    }
    let other = shared.other_frames.load(Ordering::Relaxed);
    if other > 0 {
        report.note(format!(
            "{other} other text frames (not this run's broadcasts) were read"
        ));
    }
    let extra = match &outcome {
        Ok(extra) => *extra,
        Err(_) => ArrivalStats::default(),
    };
    if extra.late > 0 {
        report.note(format!(
            "{} frames arrived after their broadcast's wait ended (not in the latencies)",
            extra.late
        ));
    }
    if extra.duplicates > 0 {
        report.note(format!(
            "{} duplicate frames: a socket got the same broadcast twice",
            extra.duplicates
        ));
    } else {
        report.note("no socket got a broadcast twice");
    }

    // 6. Summary.
    report.figures = json!({
        "requested": n,
        "established": established,
        "failed": failed,
        "ended_early": early,
        "closed_clean": clean,
        "closed_unclean": unclean,
        "source_addrs": sources.len(),
        "mint_secs": mint_secs,
        "open_secs": open_secs,
        "sockets_per_s": stats::per_second(established, open_secs),
        "close_secs": close_secs,
        "inbox_nodes": nodes.len(),
        "client_processes": o.workers.max(1),
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_bytes_per_socket": per_conn,
        "client_rss_before_kib": self_before,
        "client_rss_after_kib": self_after,
        "duplicates": extra.duplicates,
        "late": extra.late,
        "other_frames": other,
        "broadcasts": sent,
    });
    let mut summary = Table::new(
        format!("live: {n} WebSockets on `GET /v1/inbox/live`, broadcast to `all`"),
        &["measure", "value"],
    );
    let mut row = |what: &str, value: String| summary.row(vec![what.to_owned(), value]);
    row(
        "sockets",
        format!("{n} requested, {established} established, {failed} failed; {early} ended early, {clean} closed cleanly"),
    );
    row(
        "source addresses",
        format!("{}: {}", sources.len(), describe_sources(&sources)),
    );
    row(
        "tokens minted",
        format!("{mint_secs:.2} s ({} in flight)", o.mint_concurrency.max(1)),
    );
    row(
        "open time",
        format!(
            "{open_secs:.2} s = {:.0} sockets/s ({} in flight)",
            stats::per_second(established, open_secs),
            o.open_concurrency.max(1)
        ),
    );
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => row(
            &format!(
                "server RSS ({} node{}, pid {})",
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                server_pid.as_deref().unwrap_or("?")
            ),
            format!(
                "before {}, after {}, {} per socket (design target: 100,000 sockets in ≤ 2 GiB, ≈ 21 KiB each)",
                kib(b),
                kib(a),
                per_conn.map_or("?".into(), bytes)
            ),
        ),
        _ => row("server RSS", "not measured (pass --server-pid)".into()),
    }
    if let (Some(b), Some(a)) = (self_before, self_after) {
        row(
            "load-test client RSS",
            format!("before {}, after {}", kib(b), kib(a)),
        );
    }
    row(
        "close",
        format!("{clean} clean, {unclean} otherwise, in {close_secs:.2} s"),
    );
    report.tables.push(summary);
    let mut table = Table::new(
        "Broadcasts",
        &[
            "broadcast",
            "POST → 202",
            "received",
            "p50",
            "p90",
            "p99",
            "max = last socket",
            "last, from POST start",
        ],
    );
    let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1} ms"));
    for b in &sent {
        let l = &b.latency_ms;
        table.row(vec![
            format!("#{} ({} {})", b.index, b.strategy, b.campaign_id),
            format!("{:.1} ms", b.post_ms),
            format!(
                "{} / {}{}",
                b.received,
                b.expected,
                if b.before_202 > 0 {
                    format!(" ({} before the 202)", b.before_202)
                } else {
                    String::new()
                }
            ),
            l.show(l.p50_ms),
            l.show(l.p90_ms),
            l.show(l.p99_ms),
            ms(b.last_ms),
            ms(b.last_from_post_start_ms),
        ]);
    }
    report.tables.push(table);
    report.note(format!(
        "Latencies run from the moment the POST returned 202 to the frame's read on each socket \
         (waiting at most {} s); design target p99 ≤ 1 s.",
        o.wait_secs
    ));
    let report = report.finish(run_started);
    match outcome {
        Ok(_) => Ok(report),
        Err(e) => {
            // What was measured before the failure is still worth seeing.
            eprintln!("{}", report.to_markdown());
            Err(e)
        }
    }
}

/// Frames that did not count in a broadcast's latencies.
#[derive(Debug, Clone, Copy, Default)]
struct ArrivalStats {
    late: u64,
    duplicates: u64,
}

/// Sends `o.broadcasts` campaigns to `all` one after the other and waits for each to reach
/// every open socket; pushes the figures of each broadcast to `out`.
#[allow(clippy::too_many_arguments)]
async fn broadcasts(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    o: &LiveOpts,
    shared: &Shared,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    established: u64,
    out: &mut Vec<BroadcastFigures>,
) -> anyhow::Result<ArrivalStats> {
    let total = o.broadcasts as usize;
    // Which sockets got which broadcast, to count each once and to see duplicates.
    let mut got: Vec<Vec<bool>> = vec![Vec::new(); total];
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); total];
    let mut extra = ArrivalStats::default();
    let wait = Duration::from_secs(o.wait_secs);
    for b in 0..total {
        // Whatever arrived between broadcasts (late frames of the previous ones) is drained.
        while let Ok(a) = arrivals.try_recv() {
            record(&a, &mut got, &mut times, &mut extra.duplicates);
            extra.late += 1;
        }
        let title = format!("{}{b}", shared.marker);
        let started = mono_ns();
        let resp = client
            .post(format!("{url}/v1/campaigns"))
            .bearer_auth(key)
            .json(&json!({
                "audience": {"all": true},
                "content": {"title": title, "body": "Live load test: one broadcast to every socket"},
                "channels": ["in_app"],
            }))
            .send()
            .await
            .context("creating the broadcast")?;
        let accepted = mono_ns();
        let accepted_instant = Instant::now();
        let status = resp.status();
        let created: Value = resp.json().await.unwrap_or(Value::Null);
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("creating broadcast #{b}: {status} {created}");
        }
        let post_ms = accepted.saturating_sub(started) as f64 / 1e6;
        let deadline = tokio::time::Instant::from_std(accepted_instant + wait);
        loop {
            let alive = established.saturating_sub(shared.ended_early_total());
            if times[b].len() as u64 >= alive {
                break;
            }
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(a)) => record(&a, &mut got, &mut times, &mut extra.duplicates),
                Ok(None) | Err(_) => break,
            }
        }
        let received = times[b].len() as u64;
        let mut hist = stats::histogram();
        let mut before_202 = 0u64;
        for &at in &times[b] {
            if at < accepted {
                before_202 += 1;
            }
            stats::record(&mut hist, Duration::from_nanos(at.saturating_sub(accepted)));
        }
        let last = times[b].iter().max().copied();
        let ms = |ns: u64| ns as f64 / 1e6;
        let figures = BroadcastFigures {
            index: b as u32,
            campaign_id: created["id"].as_str().unwrap_or("?").to_owned(),
            strategy: created["strategy"].as_str().unwrap_or("?").to_owned(),
            post_ms,
            received,
            expected: established,
            before_202,
            latency_ms: LatencySummary::from_micros(&hist),
            latency_spectrum: stats::spectrum(&hist),
            last_ms: last.map(|l| ms(l.saturating_sub(accepted))),
            last_from_post_start_ms: last.map(|l| ms(l.saturating_sub(started))),
        };
        let l = &figures.latency_ms;
        eprintln!(
            "broadcast #{b}: POST {post_ms:.1} ms, received by {received} / {established}, p50 {} p90 {} p99 {} last {}",
            l.show(l.p50_ms),
            l.show(l.p90_ms),
            l.show(l.p99_ms),
            figures.last_ms.map_or("–".into(), |v| format!("{v:.1} ms")),
        );
        out.push(figures);
    }
    // Frames still on their way once the last wait ended.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(a) = arrivals.try_recv() {
        record(&a, &mut got, &mut times, &mut extra.duplicates);
        extra.late += 1;
    }
    Ok(extra)
}

/// Counts one arrival once per socket and broadcast.
fn record(a: &Arrival, got: &mut [Vec<bool>], times: &mut [Vec<u64>], duplicates: &mut u64) {
    let Some(seen) = got.get_mut(a.broadcast as usize) else {
        return;
    };
    let conn = a.conn as usize;
    if seen.len() <= conn {
        seen.resize(conn + 1, false);
    }
    if seen[conn] {
        *duplicates += 1;
    } else {
        seen[conn] = true;
        times[a.broadcast as usize].push(a.at);
    }
}

/// TCP connect from `source` (port chosen by the kernel), then the WebSocket handshake.
async fn open(
    url: String,
    source: Option<IpAddr>,
    server: SocketAddr,
    config: WebSocketConfig,
) -> Result<WebSocketStream<TcpStream>, String> {
    let sock = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(source) = source {
        sock.bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = sock
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                format!("handshake refused: HTTP {}", resp.status())
            }
            e => format!("handshake: {e}"),
        })?;
    Ok(ws)
}

/// Reads one socket's frames until told to stop, then closes it with a close handshake.
async fn socket(
    conn: u32,
    mut ws: WebSocketStream<TcpStream>,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => shared.on_text(conn, text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    shared.ended_early(match frame {
                        Some(f) => format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                        None => "closed by the server without a code".into(),
                    });
                    // Reading on flushes the protocol's close reply.
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    shared.ended_early(format!("read error: {e}"));
                    return;
                }
                None => {
                    shared.ended_early("stream ended without a close frame".into());
                    return;
                }
            },
            _ = stop.changed() => break,
        }
    }
    let clean = async {
        if ws.close(None).await.is_err() {
            return false;
        }
        loop {
            match ws.next().await {
                None => return true,
                Some(Ok(_)) => {}
                Some(Err(_)) => return false,
            }
        }
    }
    .await;
    let counter = if clean {
        &shared.closed_clean
    } else {
        &shared.closed_unclean
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Mints one inbox token per id, `concurrency` requests in flight, in the order of `ids`.
async fn mint_tokens(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    ids: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let total = ids.len();
    eprintln!("minting {total} tokens ({concurrency} in flight)…");
    let mut stream = futures::stream::iter(ids)
        .map(|id| async move {
            let resp = client
                .post(format!("{url}/v1/users/{id}/token"))
                .bearer_auth(key)
                .send()
                .await
                .with_context(|| format!("minting a token for {id}"))?;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("minting a token for {id}: {status} {body} (were the users seeded? see --prefix/--population)");
            }
            Ok(body["token"]
                .as_str()
                .context("token in the mint response")?
                .to_owned())
        })
        .buffered(concurrency);
    let mut out = Vec::with_capacity(total);
    let mut next_progress = PROGRESS_EVERY;
    while let Some(token) = stream.next().await {
        out.push(token?);
        if out.len() as u64 == next_progress && out.len() < total {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "  {:>8} / {total} tokens after {:.1} s",
                out.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(out)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (and the hard limit to `needed`, if it
/// is lower and the process may raise it). Returns the soft limit before and after.
fn raise_nofile(needed: u64) -> anyhow::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    let before: u64 = lim.rlim_cur;
    let mut hard: u64 = lim.rlim_max;
    if hard < needed {
        // Only a privileged process (CAP_SYS_RESOURCE) may raise the hard limit.
        let raised = libc::rlimit {
            rlim_cur: needed as libc::rlim_t,
            rlim_max: needed as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            bail!(
                "{needed} file descriptors needed but the hard RLIMIT_NOFILE is {hard} and could not be raised ({}): \
                 run under a higher `ulimit -Hn`, or ask for fewer --connections",
                std::io::Error::last_os_error()
            );
        }
        eprintln!("RLIMIT_NOFILE: hard limit raised from {hard} to {needed}");
        hard = needed;
    }
    let soft = libc::rlimit {
        rlim_cur: hard as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        bail!(
            "setrlimit(RLIMIT_NOFILE, {hard}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok((before, hard))
}

/// Ports in the kernel's ephemeral range (what one source address can open to one server).
fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// VmRSS of `/proc/<pid>/status` in KiB (`pid` may be `self`).
pub(crate) fn vm_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft "Max open files" of a process.
fn server_nofile(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    Some(soft.parse().unwrap_or(u64::MAX))
}

fn describe_sources(sources: &[IpAddr]) -> String {
    match sources {
        [] => "none (the kernel picks)".into(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first} … {last}"),
    }
}

/// The ten most frequent reasons, most frequent first, as "count × reason".
fn top_counts(counts: &HashMap<String, u64>) -> Vec<String> {
    let mut counts: Vec<_> = counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    counts
        .into_iter()
        .take(10)
        .map(|(what, count)| format!("{count} × {what}"))
        .collect()
}

fn kib(k: u64) -> String {
    if k >= 1024 * 1024 {
        format!("{:.2} GiB", k as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", k as f64 / 1024.0)
    }
}

fn bytes(b: f64) -> String {
    if b.abs() >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// The sum of the servers' VmRSS in KiB; `None` without pids or if one cannot be read.
fn total_rss_kib(pids: &[String]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| vm_rss_kib(p)).sum()
}

/// What a `live-worker` process is given on its stdin (one JSON line).
#[derive(Serialize, Deserialize)]
struct WorkerPlan {
    /// The inbox nodes: WebSocket URL up to the token, and the address to connect to.
    nodes: Vec<(String, SocketAddr)>,
    sources: Vec<IpAddr>,
    open_concurrency: usize,
    marker: String,
    /// (socket number in the whole run, token): socket i goes to node i modulo the nodes.
    sockets: Vec<(u32, String)>,
}

/// What a `live-worker` process reports on its stdout, one JSON line each.
#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum WorkerEvent {
    /// One socket's open attempt.
    Open { error: Option<String> },
    /// Notifications read: (broadcast, socket, `CLOCK_MONOTONIC` ns).
    Arrivals { a: Vec<(u32, u32, u64)> },
    /// A socket ended before the close, and why.
    Early { reason: String },
    /// The close, after `close` on stdin: the worker exits after this.
    Closed {
        clean: u64,
        unclean: u64,
        other: u64,
    },
}

/// Starts `o.workers` `live-worker` processes, each with its share of `tokens`; their reports
/// feed `shared` and `open_tx` as the sockets of this process would. Returns the tasks reading
/// their stdout (each ends when its worker exits) and their stdins (for `close`).
async fn start_workers(
    o: &LiveOpts,
    nodes: &[(String, SocketAddr)],
    sources: &[IpAddr],
    tokens: Vec<String>,
    shared: &Arc<Shared>,
    open_tx: &mpsc::UnboundedSender<Result<(), String>>,
) -> anyhow::Result<(
    Vec<tokio::task::JoinHandle<()>>,
    Vec<tokio::process::ChildStdin>,
)> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let exe = match &o.worker_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("the load test's own executable")?,
    };
    let per = tokens.len().div_ceil(o.workers.max(1) as usize).max(1);
    let mut numbered: Vec<(u32, String)> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (i as u32, t))
        .collect();
    let (mut handles, mut stdins) = (Vec::new(), Vec::new());
    while !numbered.is_empty() {
        let share: Vec<(u32, String)> = numbered.drain(..per.min(numbered.len())).collect();
        let plan = WorkerPlan {
            nodes: nodes.to_vec(),
            sources: sources.to_vec(),
            // The in-flight budget is the run's, split between the workers.
            open_concurrency: (o.open_concurrency / o.workers.max(1) as usize).max(1),
            marker: shared.marker.clone(),
            sockets: share,
        };
        let mut child = tokio::process::Command::new(&exe)
            .arg("live-worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a live-worker process")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let mut line = serde_json::to_vec(&plan)?;
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .context("handing a worker its plan")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (shared, open_tx) = (shared.clone(), open_tx.clone());
        handles.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerEvent>(&line) {
                    Ok(WorkerEvent::Open { error }) => {
                        let _ = open_tx.send(error.map_or(Ok(()), Err));
                    }
                    Ok(WorkerEvent::Arrivals { a }) => {
                        for (broadcast, conn, at) in a {
                            let _ = shared.arrivals.send(Arrival {
                                broadcast,
                                conn,
                                at,
                            });
                        }
                    }
                    Ok(WorkerEvent::Early { reason }) => shared.ended_early(reason),
                    Ok(WorkerEvent::Closed {
                        clean,
                        unclean,
                        other,
                    }) => {
                        shared.closed_clean.fetch_add(clean, Ordering::Relaxed);
                        shared.closed_unclean.fetch_add(unclean, Ordering::Relaxed);
                        shared.other_frames.fetch_add(other, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("live-worker said something unreadable ({e}): {line}"),
                }
            }
            let _ = child.wait().await;
        }));
        stdins.push(stdin);
    }
    Ok((handles, stdins))
}

/// The `live-worker` process: opens the sockets of the plan on its stdin, reports on stdout
/// (see [`WorkerEvent`]), closes them on `close` (or when stdin ends) and exits.
pub async fn live_worker() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let plan: WorkerPlan = serde_json::from_str(
        &stdin
            .next_line()
            .await?
            .context("live-worker: no plan on stdin")?,
    )
    .context("live-worker: the plan")?;
    raise_nofile(plan.sockets.len() as u64 + FD_MARGIN)?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<WorkerEvent>();
    let (arrival_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let shared = Arc::new(Shared {
        marker: plan.marker.clone(),
        arrivals: arrival_tx,
        other_frames: AtomicU64::new(0),
        ended_early: Mutex::new(HashMap::new()),
        closed_clean: AtomicU64::new(0),
        closed_unclean: AtomicU64::new(0),
        forward: Some(events_tx.clone()),
    });
    // Everything goes out through one writer; arrivals in batches (their times were taken at
    // the read, so batching them does not move them).
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
        let line = |e: &WorkerEvent| {
            let mut l = serde_json::to_vec(e).unwrap_or_default();
            l.push(b'\n');
            l
        };
        loop {
            let bytes = tokio::select! {
                e = events.recv() => match e {
                    Some(e) => line(&e),
                    None => break,
                },
                Some(a) = arrivals.recv() => {
                    let mut batch = vec![(a.broadcast, a.conn, a.at)];
                    while batch.len() < 4096 {
                        match arrivals.try_recv() {
                            Ok(a) => batch.push((a.broadcast, a.conn, a.at)),
                            Err(_) => break,
                        }
                    }
                    line(&WorkerEvent::Arrivals { a: batch })
                }
            };
            if out.write_all(&bytes).await.is_err() {
                return;
            }
            if events.is_empty() && arrivals.is_empty() && out.flush().await.is_err() {
                return;
            }
        }
        let _ = out.flush().await;
    });

    let slots = Arc::new(Semaphore::new(plan.open_concurrency.max(1)));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(plan.sockets.len());
    for (conn, token) in plan.sockets {
        let (ws_base, server) = plan.nodes[conn as usize % plan.nodes.len()].clone();
        let source =
            (!plan.sources.is_empty()).then(|| plan.sources[conn as usize % plan.sources.len()]);
        let (slots, shared, stop, events) = (
            slots.clone(),
            shared.clone(),
            stop_rx.clone(),
            events_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(permit) = slots.acquire_owned().await else {
                return;
            };
            let opened = match tokio::time::timeout(
                OPEN_TIMEOUT,
                open(format!("{ws_base}{token}"), source, server, ws_config),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {} s", OPEN_TIMEOUT.as_secs())),
            };
            drop(permit);
            let _ = events.send(WorkerEvent::Open {
                error: opened.as_ref().err().cloned(),
            });
            drop(events);
            if let Ok(ws) = opened {
                socket(conn, ws, &shared, stop).await;
            }
        }));
    }
    // Until the driver says `close` (or goes away).
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim() == "close" {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures::future::join_all(tasks)).await;
    let _ = events_tx.send(WorkerEvent::Closed {
        clean: shared.closed_clean.load(Ordering::Relaxed),
        unclean: shared.closed_unclean.load(Ordering::Relaxed),
        other: shared.other_frames.load(Ordering::Relaxed),
    });
    drop(events_tx);
    drop(shared);
    let _ = writer.await;
    Ok(())
}
