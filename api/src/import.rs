//! `POST /v1/users/import`: bulk upsert from an NDJSON body (one user object with `"id"` per
//! line).
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
use herald_core::model::User;
use herald_core::{Context, Error};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};

pub async fn import_users(State(ctx): State<Context>, body: Body) -> ApiResult<Json<Value>> {
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
                return Err(line_too_long(line_no, max_line));
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                check_line(line, line_no, now)?;
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
            return Err(line_too_long(line_no + 1, max_line));
        }
        if at_end {
            break;
        }
    }
    if valid == 0 {
        return Err(ApiError::invalid(
            "the body holds no users: send one JSON user object with an \"id\" per line",
        ));
    }
    spool.flush().await.map_err(spool_error)?;
    let mut file = spool.into_inner();
    file.rewind().await.map_err(spool_error)?;

    // Pass 2: parse batches and write them; one batch is written while the next is parsed.
    // Each batch is one transaction, in line order: when a write fails, the lines before it
    // are written and the rest are not, and the answer says so. Upserts are idempotent, so
    // sending the same file again is safe. The writer is a task of its own: a client that goes
    // away does not stop a batch half-way.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<User>>(2);
    let directory = ctx.ports.directory.clone();
    let writer = tokio::spawn(async move {
        let mut lines_written = 0u64;
        let mut written = 0u64;
        while let Some(batch) = rx.recv().await {
            match directory.upsert_users(&batch).await {
                Ok(n) => {
                    written += n;
                    lines_written += batch.len() as u64;
                }
                Err(e) => return Err((lines_written, e)),
            }
        }
        Ok::<u64, (u64, Error)>(written)
    });
    let mut lines = BufReader::with_capacity(1 << 20, file).lines();
    let mut batch = Vec::with_capacity(batch_size);
    while let Some(line) = lines.next_line().await.map_err(spool_error)? {
        batch.push(parse_user(line.as_bytes(), now)?);
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
    let imported = writer
        .await
        .map_err(|e| Error::internal("import writer failed").with_source(e))?
        .map_err(|(lines_written, e)| {
            Error::new(
                e.kind,
                format!(
                    "{}: the import stopped after writing the first {lines_written} of {valid} \
                     users (their lines in file order); the rest were not written, and sending \
                     the same file again is safe",
                    e.message
                ),
            )
        })?;
    let secs = started.elapsed().as_secs_f64();
    metrics::counter!("herald_users_imported_total").increment(imported);
    tracing::info!(
        imported,
        secs,
        rate = imported as f64 / secs.max(1e-9),
        "users imported"
    );
    Ok(Json(json!({ "imported": imported })))
}

fn line_too_long(line_no: u64, max: usize) -> ApiError {
    ApiError::TooLarge(
        max as u64,
        format!("line {line_no} is longer than the {max} bytes a user's line may have"),
    )
}

fn spool_error(e: std::io::Error) -> ApiError {
    ApiError::Core(Error::internal("import spool I/O failed").with_source(e))
}

/// Validates one line; errors name the line.
fn check_line(line: &[u8], line_no: u64, now: chrono::DateTime<chrono::Utc>) -> ApiResult<()> {
    parse_user(line, now).map(|_| ()).map_err(|e| match e {
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
