//! `herald`: one binary, a subcommand per role. This file is wiring only: it reads the
//! configuration, sets up logging, resolves secrets, opens the backends and hands a `Context`,
//! a listener and a shutdown signal to the role libraries. No business logic lives here; the
//! operator commands that call a running server are in `operator.rs`.

/// mimalloc: glibc's allocator spends a quarter of the push path's CPU in malloc/free under
/// many threads; mimalloc's per-thread heaps do not. Built without transparent huge pages
/// (the workspace's `no_thp` feature), which kept freed memory resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod operator;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herald_core::config::{Config, Secret};
use herald_core::context::Secrets;
use herald_core::ports::ReplayFrom;
use herald_core::{Context, SystemClock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Herald: a self-hostable notification fan-out platform",
    long_about = "Herald turns one event into notifications for one user or fifty million, over \
                  in-app inbox, WebSocket, push, email, SMS and webhooks.\n\n\
                  Configuration: compiled defaults, then the TOML file given by --config or \
                  HERALD_CONFIG, then HERALD_* environment variables (nested keys split by __, \
                  e.g. HERALD_FANOUT__BATCH_SIZE=500). Common ones: HERALD_LISTEN \
                  (default 127.0.0.1:8080), HERALD_DATA_DIR (default ./herald-data), \
                  HERALD_ADMIN_KEY."
)]
struct Cli {
    /// Path of a TOML configuration file.
    #[arg(long, global = true, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every role in one process on one port, with embedded backends unless configured
    /// otherwise. Needs no services: data goes to HERALD_DATA_DIR (./herald-data).
    Serve,
    /// Run the admin REST API only (users, segments, templates, campaigns).
    Api,
    /// Run the fan-out role: audience-sizing dispatcher, batch workers, broadcast lifecycle.
    Fanout,
    /// Run the inbox role: inbox HTTP API and WebSocket live feed.
    Inbox,
    /// Run the push gateway: channel consumers, provider clients, retries, dead letters.
    Push,
    /// Apply the schemas to every configured backend, then exit.
    Migrate,
    /// Print the OpenAPI 3.1 document of the HTTP APIs (what `herald serve` serves at
    /// /openapi.json), to generate clients from.
    Openapi,
    /// Look at the bus (what the consumer groups have left to do) and replay it.
    Bus {
        #[command(subcommand)]
        command: BusCommand,
    },
    /// Users, through a running server's admin API.
    Users {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Devices, through a running server's admin API.
    Devices {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Campaigns, through a running server's admin API.
    Campaigns {
        #[command(subcommand)]
        command: CampaignsCommand,
    },
}

/// Where a running server is: `--url`, else `HERALD_URL`, else `http://` + HERALD_LISTEN. The
/// admin key is HERALD_ADMIN_KEY, else the one kept in the data directory.
#[derive(clap::Args, Debug)]
struct Server {
    /// The server's base URL.
    #[arg(long, env = "HERALD_URL", value_name = "URL")]
    url: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// Send an NDJSON file (one object per line) to the bulk import, with a progress bar.
    /// Every line is checked before anything is written; a bad line is named and nothing is.
    Import {
        file: PathBuf,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Subcommand, Debug)]
enum CampaignsCommand {
    /// Follow a campaign until it ends: batches on a progress bar, rows written and
    /// deliveries per channel. Exits non-zero if it ends failed or cancelled.
    Watch {
        id: String,
        /// How often to ask, in milliseconds.
        #[arg(long, default_value_t = 500)]
        every_ms: u64,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Subcommand, Debug)]
enum BusCommand {
    /// Print each consumer group's lag (messages published and not yet committed by the
    /// group) and what waits in the delay store.
    Lag {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move a consumer group back (or forward) so it receives again what was published from
    /// a point on (event replay). Stop the group's consumers first where the engine needs it
    /// (Kafka).
    Replay {
        /// The topic, such as `channel.email`.
        #[arg(long)]
        topic: String,
        /// The consumer group, such as `push-gateway`.
        #[arg(long)]
        group: String,
        /// Where to start: `earliest`, an RFC 3339 time, or an engine offset (log sequence on
        /// SQLite, stream sequence on JetStream, offset in every partition on Kafka).
        #[arg(long, value_parser = parse_replay_from)]
        from: ReplayFrom,
        /// Only say how many messages the group would receive.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_replay_from(raw: &str) -> Result<ReplayFrom, String> {
    if raw.eq_ignore_ascii_case("earliest") {
        return Ok(ReplayFrom::Earliest);
    }
    if let Ok(offset) = raw.parse::<u64>() {
        return Ok(ReplayFrom::Offset(offset));
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| ReplayFrom::Time(t.with_timezone(&chrono::Utc)))
        .map_err(|_| format!("`{raw}` is not `earliest`, an offset or an RFC 3339 time"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        // Needs no configuration: the document is the code's.
        println!("{}", openapi_document().to_pretty_json()?);
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    config.validate()?;
    init_tracing(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(run(cli.command, config));
    // Tasks still running stop here; a blocking call that never returns does not hold the exit.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    if !herald_storage::wait_for_bus_closes(SHUTDOWN_GRACE) {
        tracing::warn!("bus consumers still leaving their groups at exit: their partitions move once their sessions time out");
    }
    outcome
}

/// How long the way out waits for what is still running after the roles stopped (blocking
/// tasks, then bus members leaving their groups), each.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Migrate => migrate(&config).await,
        Command::Openapi => unreachable!("answered before the configuration is read"),
        Command::Bus {
            command: BusCommand::Lag { json },
        } => bus_lag(&config, json).await,
        Command::Bus {
            command:
                BusCommand::Replay {
                    topic,
                    group,
                    from,
                    dry_run,
                },
        } => bus_replay(&config, &topic, &group, from, dry_run).await,
        Command::Users {
            command: ImportCommand::Import { file, server },
        } => {
            let target = operator::Target::new(&config, server.url)?;
            operator::import(&target, operator::Import::Users, &file).await
        }
        Command::Devices {
            command: ImportCommand::Import { file, server },
        } => {
            let target = operator::Target::new(&config, server.url)?;
            operator::import(&target, operator::Import::Devices, &file).await
        }
        Command::Campaigns {
            command:
                CampaignsCommand::Watch {
                    id,
                    every_ms,
                    server,
                },
        } => {
            let target = operator::Target::new(&config, server.url)?;
            operator::watch(
                &target,
                &id,
                std::time::Duration::from_millis(every_ms.max(50)),
            )
            .await
        }
        Command::Serve => {
            // A provider misconfigured (unreadable key file, ...) stops the start before
            // anything is opened or announced.
            let providers = herald_push::Providers::from_config(&config.push)
                .context("setting up the push providers")?;
            let ctx = build_context(config, true).await?;
            let listener = bind(&ctx.config.listen, "serve").await?;
            let shutdown = shutdown_signal();
            let fanout = tokio::spawn(herald_fanout::run(ctx.clone(), shutdown.clone()));
            let push = tokio::spawn(herald_push::run_with(
                ctx.clone(),
                providers,
                shutdown.clone(),
            ));
            // One port for everything: admin API, inbox API with its live feed, operations.
            let (inbox, live) = herald_inbox::router_with_feed(
                ctx.clone(),
                herald_inbox::LiveConfig::default(),
                shutdown.clone(),
            );
            let router = herald_http::finish(
                herald_api::admin_router(ctx.clone())
                    .merge(inbox)
                    .merge(herald_http::ops_router(ctx.clone()))
                    .merge(herald_http::openapi::openapi_router(&openapi_document())),
            );
            herald_http::serve(listener, router, shutdown.clone())
                .await
                .context("HTTP server failed")?;
            shutdown.cancel();
            // Upgraded sockets outlive the HTTP server's drain: give their "going away"
            // close frames a moment to leave.
            live.drained(std::time::Duration::from_secs(2)).await;
            // Let the dispatchers checkpoint and hand back what they hold.
            let _ = fanout.await;
            let _ = push.await;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Api => {
            require_shared_secrets("api", &config)?;
            let ctx = build_context(config, false).await?;
            let listener = bind(&ctx.config.listen, "api").await?;
            herald_api::run(ctx, listener, shutdown_signal())
                .await
                .context("HTTP server failed")?;
            Ok(())
        }
        Command::Fanout => {
            let ctx = build_context(config, false).await?;
            let listener = bind(&ctx.config.listen, "fanout").await?;
            let shutdown = shutdown_signal();
            let role = tokio::spawn(herald_fanout::run(ctx.clone(), shutdown.clone()));
            // Worker roles serve only /healthz, /readyz and /metrics.
            let ops = herald_http::finish(herald_http::ops_router(ctx));
            herald_http::serve(listener, ops, shutdown).await?;
            let _ = role.await;
            Ok(())
        }
        Command::Inbox => {
            require_shared_secrets("inbox", &config)?;
            let ctx = build_context(config, false).await?;
            let listener = bind(&ctx.config.listen, "inbox").await?;
            herald_inbox::run(ctx, listener, shutdown_signal())
                .await
                .context("HTTP server failed")?;
            Ok(())
        }
        Command::Push => {
            let providers = herald_push::Providers::from_config(&config.push)
                .context("setting up the push providers")?;
            let ctx = build_context(config, false).await?;
            let listener = bind(&ctx.config.listen, "push").await?;
            let shutdown = shutdown_signal();
            let role = tokio::spawn(herald_push::run_with(
                ctx.clone(),
                providers,
                shutdown.clone(),
            ));
            let ops = herald_http::finish(herald_http::ops_router(ctx));
            herald_http::serve(listener, ops, shutdown).await?;
            let _ = role.await;
            Ok(())
        }
    }
}

async fn bus_lag(config: &Config, json: bool) -> anyhow::Result<()> {
    let ports = herald_storage::open_ports(config).await?;
    let report = herald_usecases::ops::lag(&ports).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{:<20} {:<18} {:>10}", "topic", "group", "lag");
    for g in &report.groups {
        println!("{:<20} {:<18} {:>10}", g.topic, g.group, g.lag);
    }
    let next = report
        .delays
        .next_due
        .map(|t| format!(", next due {}", t.to_rfc3339()))
        .unwrap_or_default();
    println!("delay store: {} waiting{next}", report.delays.waiting);
    Ok(())
}

async fn bus_replay(
    config: &Config,
    topic: &str,
    group: &str,
    from: ReplayFrom,
    dry_run: bool,
) -> anyhow::Result<()> {
    let bus = herald_storage::open_configured_bus(config).await?;
    let n = bus.replay(topic, group, from.clone(), dry_run).await?;
    let start = match &from {
        ReplayFrom::Earliest => "the earliest message kept".to_owned(),
        ReplayFrom::Time(t) => t.to_rfc3339(),
        ReplayFrom::Offset(o) => format!("offset {o}"),
    };
    if dry_run {
        println!("dry run: group `{group}` would receive {n} messages of `{topic}` from {start}");
    } else {
        println!("group `{group}` moved to {start} on `{topic}`: {n} messages to receive");
    }
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    eprintln!("herald migrate: applying schemas…");
    let started = std::time::Instant::now();
    let ports = herald_storage::open_ports(config).await?;
    ports.ping().await?;
    for (port, url) in [
        ("directory", &config.backends.directory),
        ("campaigns", &config.backends.campaigns),
        ("inbox", &config.backends.inbox),
        ("broadcasts", &config.backends.broadcasts),
        (
            "broadcast states",
            config
                .backends
                .broadcast_states
                .as_ref()
                .map_or(&config.backends.broadcasts, |_| {
                    &config.backends.broadcast_states
                }),
        ),
        ("bus", &config.backends.bus),
        ("deliveries", &config.backends.deliveries),
        ("delays", &config.backends.delays),
    ] {
        let shown = match url {
            Some(u) => herald_storage::BackendUrl::parse(u.expose())?.redacted(),
            None => herald_storage::BackendUrl::embedded(
                &config.data_dir,
                if port == "broadcast states" {
                    "broadcasts"
                } else {
                    port
                },
            )
            .redacted(),
        };
        eprintln!("  {port:<16} {shown}  ok");
    }
    eprintln!("done in {:.1?}", started.elapsed());
    Ok(())
}

async fn build_context(config: Config, print_banner: bool) -> anyhow::Result<Context> {
    let (admin_key, admin_from_file) =
        resolve_secret(config.admin_key.as_ref(), &config.data_dir, "admin.key")?;
    let (token_secret, _) = resolve_secret(
        config.inbox.token_secret.as_ref(),
        &config.data_dir,
        "token.secret",
    )?;
    let ports = herald_storage::open_ports(&config)
        .await
        .context("opening the backends")?;
    if print_banner {
        // stdout, not the log: the operator needs the key once, log shippers must never see it.
        if let Some(path) = admin_from_file {
            println!(
                "Admin key: {}  (kept in {}; set HERALD_ADMIN_KEY to choose your own)",
                admin_key.expose(),
                path.display()
            );
        }
    }
    Ok(Context {
        config: Arc::new(config),
        ports,
        clock: Arc::new(SystemClock),
        secrets: Secrets {
            admin_key,
            token_secret,
        },
        workers: Default::default(),
    })
}

/// A role run apart shares the inbox token secret with the other processes: `api` mints the
/// tokens that every `inbox` verifies. A secret generated per process (or per data directory)
/// would make one refuse what another minted, so these roles start only with it configured.
fn require_shared_secrets(role: &str, config: &Config) -> anyhow::Result<()> {
    if config.inbox.token_secret.is_none() {
        anyhow::bail!(
            "`herald {role}` runs apart from the other roles, and inbox tokens minted by `herald api` \
             must verify on every `herald inbox`: set the same inbox.token_secret \
             (HERALD_INBOX__TOKEN_SECRET, at least 32 bytes) on every api and inbox process, \
             or run `herald serve`"
        );
    }
    Ok(())
}

/// The configured secret, or the one kept in `data_dir/file`, generated on first start.
/// Returns the file's path when the secret came from (or went to) it.
fn resolve_secret(
    configured: Option<&Secret>,
    data_dir: &Path,
    file: &str,
) -> anyhow::Result<(Secret, Option<PathBuf>)> {
    if let Some(secret) = configured {
        return Ok((secret.clone(), None));
    }
    let path = data_dir.join(file);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok((Secret::new(existing), Some(path)));
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let bytes: [u8; 24] = rand::random();
    let secret = format!("hk_{}", hex::encode(bytes));
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok((Secret::new(secret), Some(path)))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")
}

/// The OpenAPI document of every role `herald serve` runs: the admin API, the inbox API and
/// the operations endpoints (`herald api` and `herald inbox` serve their own parts).
fn openapi_document() -> utoipa::openapi::OpenApi {
    herald_http::openapi::finish_document([
        herald_api::openapi::document(),
        herald_inbox::openapi::document(),
    ])
}

/// Binds the role's port and says on stdout where it listens: the address bound, so
/// `HERALD_LISTEN=127.0.0.1:0` (a port the kernel picks) tells a supervisor or a test which
/// port it got, with no window in which another process could take it.
async fn bind(addr: &str, role: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (set HERALD_LISTEN to another address)")
    })?;
    let bound = listener.local_addr().context("the address bound")?;
    if role == "serve" {
        println!("Herald is listening on http://{bound}");
    } else {
        println!("Herald {role} is listening on http://{bound}");
    }
    Ok(listener)
}

/// Cancelled on Ctrl-C or SIGTERM, so every role drains and stops together.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
