-- The delivery log (core/src/analytics.rs; what /v1/analytics and /v1/health/status read;
-- the same state as migrations/sqlite/deliveries/0003_delivery_log.sql): every delivery report
-- added to the rollup of its minute and channel, with the latency histogram of its sends and a
-- bounded sample of its failures. `delivery_log_keys` holds the key of every report recorded,
-- inserted in the same transaction as the additions, so a redelivered report adds nothing.
-- Purged after analytics.retention_days. Times are BIGINT microseconds since the Unix epoch.
--
-- No hot row: every push gateway node reports into the same minute and channel, so the rollup
-- and histogram rows are spread over 8 shards (the report key's hash picks one) and reads add
-- the shards up, like the campaign counters (migrations/mysql/campaigns/0001_init.sql).
CREATE TABLE IF NOT EXISTS delivery_log_keys (
    msg_key  VARCHAR(700) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (msg_key),
    KEY delivery_log_keys_by_time (at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS delivery_rollups (
    minute          BIGINT NOT NULL,
    channel         VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    shard           SMALLINT NOT NULL,
    reports         BIGINT NOT NULL DEFAULT 0,
    sent            BIGINT NOT NULL DEFAULT 0,
    failed          BIGINT NOT NULL DEFAULT 0,
    invalid_tokens  BIGINT NOT NULL DEFAULT 0,
    dead_lettered   BIGINT NOT NULL DEFAULT 0,
    unreachable     BIGINT NOT NULL DEFAULT 0,
    retried         BIGINT NOT NULL DEFAULT 0,
    latency_ms_sum  BIGINT NOT NULL DEFAULT 0,
    provider_ms     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, channel, shard)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS delivery_latency (
    minute   BIGINT NOT NULL,
    channel  VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    bucket   SMALLINT NOT NULL,
    shard    SMALLINT NOT NULL,
    sends    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, channel, bucket, shard)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS delivery_failures (
    channel  VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    at       BIGINT NOT NULL,
    id       VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    spec     TEXT NOT NULL,
    PRIMARY KEY (channel, at, id),
    KEY delivery_failures_by_time (at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
