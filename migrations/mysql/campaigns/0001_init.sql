-- The campaign store on MySQL 8 / MariaDB 10.11: campaigns, their progress counters, recorded
-- batches and delivery reports, failures, leases, idempotency keys and event rules (the same
-- state as migrations/sqlite/campaigns/; storage/src/mysql/campaigns.rs). Times are BIGINT
-- microseconds since the Unix epoch; ids and keys are binary collated (byte order, case kept).
--
-- Counters without a hot row. Every fan-out worker records each batch it finishes, and every
-- push gateway node reports deliveries: with one counter row per campaign, all of them would
-- queue on that row's lock. The counters therefore live in `campaign_counters` and
-- `campaign_channel_counters`, spread over COUNTER_SHARDS (16) rows per campaign (and channel):
-- a batch adds to the shard of its batch number, a delivery report to the shard its key hashes
-- to, so concurrent writers take different row locks. Reads add the shards up (16 rows, on the
-- primary key). The campaign row itself is written only by the dispatcher holding the lease
-- (sizing, checkpoints), by status transitions, and, rarely, to serialise the additions to the
-- failure sample (which must stay within its bound).
--
-- Exactly-once accounting: `campaign_batches` (one row per recorded batch number) and
-- `campaign_delivery_reports` (one row per report key) are inserted in the same transaction as
-- the counter additions; a second recording finds the row and adds nothing.

CREATE TABLE IF NOT EXISTS campaigns (
    id             VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status         VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    strategy       VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    spec           LONGTEXT NOT NULL,
    starts_at      BIGINT NULL,
    expires_at     BIGINT NULL,
    audience_size  BIGINT NOT NULL DEFAULT 0,
    batches_total  BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT NULL,
    completed_at   BIGINT NULL,
    next_batch     BIGINT NOT NULL DEFAULT 0,
    after_user     VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    batching_done  TINYINT NOT NULL DEFAULT 0,
    lease_owner    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    lease_until    BIGINT NULL,
    lease_fence    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id),
    KEY campaigns_by_status (status, id),
    KEY campaigns_due (status, starts_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS campaign_counters (
    campaign_id            VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    shard                  SMALLINT NOT NULL,
    batches_done           BIGINT NOT NULL DEFAULT 0,
    notifications_written  BIGINT NOT NULL DEFAULT 0,
    skipped_opted_out      BIGINT NOT NULL DEFAULT 0,
    deferred_quiet_hours   BIGINT NOT NULL DEFAULT 0,
    failed_render          BIGINT NOT NULL DEFAULT 0,
    failed_batches         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, shard)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS campaign_channel_counters (
    campaign_id  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    channel      VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    shard        SMALLINT NOT NULL,
    queued       BIGINT NOT NULL DEFAULT 0,
    sent         BIGINT NOT NULL DEFAULT 0,
    failed       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, channel, shard)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS campaign_batches (
    campaign_id  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    batch_no     BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, batch_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS campaign_delivery_reports (
    campaign_id  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    report_key   VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    PRIMARY KEY (campaign_id, report_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS campaign_failures (
    campaign_id  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    seq          INT NOT NULL,
    batch_no     BIGINT NOT NULL,
    user_id      VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    reason       TEXT NOT NULL,
    PRIMARY KEY (campaign_id, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS campaign_failed_batches (
    campaign_id  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    batch_no     BIGINT NOT NULL,
    user_ids     LONGTEXT NOT NULL,
    reason       TEXT NOT NULL,
    failed_at    BIGINT NOT NULL,
    replayed_at  BIGINT NULL,
    replay_done  TINYINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, batch_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS idempotency_keys (
    idem_key      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    request_hash  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    resource_id   VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status        INT NULL,
    body          LONGBLOB NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (idem_key),
    KEY idempotency_keys_by_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS rules (
    event_type  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    spec        LONGTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (event_type)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
