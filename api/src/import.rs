//! `POST /v1/users/import` and `POST /v1/devices/import`: bulk upserts from an NDJSON body
//! (one user object with `"id"`, or one device with `"user_id"`, `"platform"` and `"token"`,
//! per line).
//!
//! Bad input must change nothing, yet a million-user body is too large to hold parsed in
//! memory. So the import runs in two passes: the first streams the body, validates every line
//! and spools the valid bytes to an anonymous temp file; only if every line passed does the
//! second pass read the spool back and write batched upserts, with parsing of the next batch
//! overlapping the write of the previous one.

use crate::http::{parse_json, ApiError, ApiResult};
use crate::users::UserInput;
use axum::body::Body;
use axum::extract::State;
use axum::Json;
use futures::StreamExt;
use herald_core::ids::validate_key;
use herald_core::model::{validate_device_token, Device, Platform, User};
use herald_core::{Context, Error};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};

#[utoipa::path(post, path = "/v1/users/import", tag = "users", request_body(content = String, content_type = "application/x-ndjson", description = "One user per line: `{\"id\": ..., \"email\": ..., \"phone\": ..., \"attributes\": {...}}`; streamed, at most `api.max_import_bytes`"), responses((status = 200, description = "Every line stored; a bad line refuses the import from that line on, naming it", body = crate::openapi::UsersImported)))]
pub async fn import_users(State(ctx): State<Context>, body: Body) -> ApiResult<Json<Value>> {
    let directory = ctx.ports.directory.clone();
    let done = import(&ctx, body, &USERS, parse_user, move |batch: Vec<User>| {
        let directory = directory.clone();
        async move {
            let n = directory.upsert_users(&batch).await?;
            Ok(Written {
                written: n,
                skipped: 0,
                unknown: Vec::new(),
            })
        }
    })
    .await?;
    metrics::counter!("herald_users_imported_total").increment(done.written);
    Ok(Json(json!({ "imported": done.written })))
}

/// At most this many unknown user ids are named in a device import's answer.
const UNKNOWN_NAMED: usize = 100;

#[utoipa::path(post, path = "/v1/devices/import", tag = "users", request_body(content = String, content_type = "application/x-ndjson", description = "One device per line: `{\"user_id\": ..., \"platform\": \"fcm\"|\"apns\"|\"web\", \"token\": ...}`"), responses((status = 200, description = "Devices registered; lines of unknown users skipped and counted", body = crate::openapi::DevicesImported)))]
pub async fn import_devices(State(ctx): State<Context>, body: Body) -> ApiResult<Json<Value>> {
    let directory = ctx.ports.directory.clone();
    let done = import(
        &ctx,
        body,
        &DEVICES,
        parse_device,
        move |batch: Vec<Device>| {
            let directory = directory.clone();
            async move {
                let unknown = directory.put_devices(&batch).await?;
                let skipped = batch
                    .iter()
                    .filter(|d| unknown.binary_search(&d.user_id).is_ok())
                    .count() as u64;
                Ok(Written {
                    written: batch.len() as u64 - skipped,
                    skipped,
                    unknown,
                })
            }
        },
    )
    .await?;
    metrics::counter!("herald_devices_imported_total").increment(done.written);
    Ok(Json(json!({
        "imported": done.written,
        "skipped_unknown_users": done.skipped,
        "unknown_users": done.unknown,
    })))
}

/// The words an import's messages use for what it imports.
struct Kind {
    /// "user", "device".
    one: &'static str,
    many: &'static str,
    /// What a line must hold, for the "nothing in the body" answer.
    shape: &'static str,
}

const USERS: Kind = Kind {
    one: "user",
    many: "users",
    shape: "one JSON user object with an \"id\" per line",
};

const DEVICES: Kind = Kind {
    one: "device",
    many: "devices",
    shape: "one JSON object with \"user_id\", \"platform\" and \"token\" per line",
};

/// What writing one batch did.
struct Written {
    written: u64,
    /// Lines of the batch not written (a device of a user who does not exist).
    skipped: u64,
    /// The users those lines named (sorted, each once).
    unknown: Vec<String>,
}

/// [`Written`] summed over the import; `unknown` keeps the first [`UNKNOWN_NAMED`].
#[derive(Default)]
struct Done {
    written: u64,
    skipped: u64,
    unknown: Vec<String>,
}

/// The two passes (see the module doc) of an import whose lines `parse` reads and whose
/// batches `write` writes.
async fn import<T, W, F>(
    ctx: &Context,
    body: Body,
    kind: &'static Kind,
    parse: fn(&[u8], chrono::DateTime<chrono::Utc>) -> ApiResult<T>,
    write: W,
) -> ApiResult<Done>
where
    T: Send + 'static,
    W: Fn(Vec<T>) -> F + Send + 'static,
    F: std::future::Future<Output = herald_core::Result<Written>> + Send,
{
    let started = Instant::now();
    let max_bytes = ctx.config.api.max_import_bytes;
    let batch_size = ctx.config.api.import_batch_size.max(1);
    let now = ctx.clock.now();

    let spool = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| Error::internal("spool task failed").with_source(e))?
        .map_err(|e| Error::internal("cannot create an import spool file").with_source(e))?;
    let mut spool = BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(spool));

    // Pass 1: validate and spool, within the time and line limits.
    let max_line = ctx.config.api.max_import_line_bytes.max(1);
    let idle = crate::http::BODY_IDLE_TIMEOUT;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(ctx.config.api.import_read_timeout_secs.max(1));
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    // How far `pending` is known to hold no newline: each byte is scanned once, however the
    // body is cut into chunks (a long line must not cost a rescan per chunk).
    let mut scanned = 0;
    let mut received: u64 = 0;
    let mut line_no: u64 = 0;
    let mut valid: u64 = 0;
    loop {
        let next = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + idle),
            stream.next(),
        );
        let chunk = next.await.map_err(|_| {
            ApiError::Timeout(format!(
                "the import body did not arrive in time (it may pause at most {} s, and take \
                 {} s in all); {line_no} lines were read, nothing was written",
                idle.as_secs(),
                ctx.config.api.import_read_timeout_secs
            ))
        })?;
        let at_end = chunk.is_none();
        if let Some(chunk) = chunk {
            let chunk = chunk.map_err(|e| {
                if crate::http::is_body_timeout(&e) {
                    ApiError::Timeout(format!(
                        "the import body paused for more than {} s; {line_no} lines were read, \
                         nothing was written",
                        idle.as_secs()
                    ))
                } else {
                    ApiError::Malformed(format!("could not read the request body: {e}"))
                }
            })?;
            received += chunk.len() as u64;
            if received > max_bytes {
                return Err(ApiError::too_large(max_bytes));
            }
            pending.extend_from_slice(&chunk);
        } else if !pending.is_empty() && pending.last() != Some(&b'\n') {
            pending.push(b'\n'); // the last line needs no newline
        }
        let mut start = 0;
        while let Some(len) = pending[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + len;
            let line = &pending[start..end];
            line_no += 1;
            if line.len() > max_line {
                return Err(line_too_long(line_no, max_line, kind));
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                check_line(line, line_no, now, parse)?;
                spool.write_all(line).await.map_err(spool_error)?;
                spool.write_all(b"\n").await.map_err(spool_error)?;
                valid += 1;
            }
            start = end + 1;
            scanned = start;
        }
        pending.drain(..start);
        scanned = pending.len();
        if pending.len() > max_line {
            return Err(line_too_long(line_no + 1, max_line, kind));
        }
        if at_end {
            break;
        }
    }
    if valid == 0 {
        return Err(ApiError::invalid(format!(
            "the body holds no {}: send {}",
            kind.many, kind.shape
        )));
    }
    spool.flush().await.map_err(spool_error)?;
    let mut file = spool.into_inner();
    file.rewind().await.map_err(spool_error)?;

    // Pass 2: parse batches and write them; one batch is written while the next is parsed.
    // Each batch is one transaction, in line order: when a write fails, the lines before it
    // are written and the rest are not, and the answer says so. Upserts are idempotent, so
    // sending the same file again is safe. The writer is a task of its own: a client that goes
    // away does not stop a batch half-way.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<T>>(2);
    let writer = tokio::spawn(async move {
        let mut lines_written = 0u64;
        let mut done = Done::default();
        while let Some(batch) = rx.recv().await {
            let lines = batch.len() as u64;
            match write(batch).await {
                Ok(w) => {
                    done.written += w.written;
                    done.skipped += w.skipped;
                    let room = UNKNOWN_NAMED.saturating_sub(done.unknown.len());
                    done.unknown.extend(w.unknown.into_iter().take(room));
                    lines_written += lines;
                }
                Err(e) => return Err((lines_written, e)),
            }
        }
        Ok::<Done, (u64, Error)>(done)
    });
    let mut lines = BufReader::with_capacity(1 << 20, file).lines();
    let mut batch = Vec::with_capacity(batch_size);
    while let Some(line) = lines.next_line().await.map_err(spool_error)? {
        batch.push(parse(line.as_bytes(), now)?);
        if batch.len() == batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            if tx.send(full).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch).await;
    }
    drop(tx);
    let done = writer
        .await
        .map_err(|e| Error::internal("import writer failed").with_source(e))?
        .map_err(|(lines_written, e)| {
            Error::new(
                e.kind,
                format!(
                    "{}: the import stopped after writing the first {lines_written} of {valid} \
                     {} (their lines in file order); the rest were not written, and sending \
                     the same file again is safe",
                    e.message, kind.many
                ),
            )
        })?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        kind = kind.many,
        imported = done.written,
        skipped = done.skipped,
        secs,
        rate = done.written as f64 / secs.max(1e-9),
        "import done"
    );
    Ok(done)
}

fn line_too_long(line_no: u64, max: usize, kind: &Kind) -> ApiError {
    ApiError::TooLarge(
        max as u64,
        format!(
            "line {line_no} is longer than the {max} bytes a {}'s line may have",
            kind.one
        ),
    )
}

fn spool_error(e: std::io::Error) -> ApiError {
    ApiError::Core(Error::internal("import spool I/O failed").with_source(e))
}

/// Validates one line; errors name the line.
fn check_line<T>(
    line: &[u8],
    line_no: u64,
    now: chrono::DateTime<chrono::Utc>,
    parse: fn(&[u8], chrono::DateTime<chrono::Utc>) -> ApiResult<T>,
) -> ApiResult<()> {
    parse(line, now).map(|_| ()).map_err(|e| match e {
        ApiError::Malformed(m) => ApiError::Malformed(format!("line {line_no}: {m}")),
        ApiError::Core(core) => ApiError::Core(Error::new(
            core.kind,
            format!("line {line_no}: {}", core.message),
        )),
        other => other,
    })
}

pub(crate) fn parse_user(line: &[u8], now: chrono::DateTime<chrono::Utc>) -> ApiResult<User> {
    let input: UserInput = parse_json(line)?;
    let id = input
        .id
        .clone()
        .ok_or_else(|| ApiError::invalid("each user needs an \"id\""))?;
    validate_key("user id", &id)?;
    input.into_user(id, now)
}

/// One line of a device import.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceLine {
    user_id: String,
    platform: Platform,
    token: String,
}

pub(crate) fn parse_device(line: &[u8], now: chrono::DateTime<chrono::Utc>) -> ApiResult<Device> {
    let d: DeviceLine = parse_json(line)?;
    validate_key("user_id", &d.user_id)?;
    validate_device_token(&d.token)?;
    Ok(Device {
        user_id: d.user_id,
        platform: d.platform,
        token: d.token,
        created_at: now,
        last_used_at: now,
    })
}
