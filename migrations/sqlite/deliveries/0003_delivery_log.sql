-- The delivery log (core/src/analytics.rs; what /v1/analytics and /v1/health/status read):
-- every delivery report added to the rollup of its minute and channel, with the latency
-- histogram of its sends and a bounded sample of its failures. `delivery_log_keys` holds the
-- key of every report recorded, written in the same transaction as the additions, so a
-- redelivered report adds nothing. All four are purged after analytics.retention_days.
-- Times are microseconds since the Unix epoch; `minute` is the start of the minute.
CREATE TABLE IF NOT EXISTS delivery_log_keys (
    key  TEXT PRIMARY KEY NOT NULL,
    at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivery_log_keys_by_time ON delivery_log_keys (at);

CREATE TABLE IF NOT EXISTS delivery_rollups (
    minute          INTEGER NOT NULL,
    channel         TEXT NOT NULL,
    reports         INTEGER NOT NULL DEFAULT 0,
    sent            INTEGER NOT NULL DEFAULT 0,
    failed          INTEGER NOT NULL DEFAULT 0,
    invalid_tokens  INTEGER NOT NULL DEFAULT 0,
    dead_lettered   INTEGER NOT NULL DEFAULT 0,
    unreachable     INTEGER NOT NULL DEFAULT 0,
    retried         INTEGER NOT NULL DEFAULT 0,
    latency_ms_sum  INTEGER NOT NULL DEFAULT 0,
    provider_ms     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, channel)
) WITHOUT ROWID;

-- Sends per latency bucket (core/src/analytics.rs, LATENCY_BOUNDS_SECS) of a minute.
CREATE TABLE IF NOT EXISTS delivery_latency (
    minute   INTEGER NOT NULL,
    channel  TEXT NOT NULL,
    bucket   INTEGER NOT NULL,
    sends    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, channel, bucket)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS delivery_failures (
    channel  TEXT NOT NULL,
    at       INTEGER NOT NULL,
    id       TEXT NOT NULL,              -- UUIDv7
    spec     TEXT NOT NULL,              -- the LoggedFailure as JSON
    PRIMARY KEY (channel, at, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivery_failures_by_time ON delivery_failures (at);
