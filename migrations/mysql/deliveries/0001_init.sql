-- The push gateway's state on MySQL 8 / MariaDB 10.11: webhook subscriptions, dead letters and
-- processed-message marks (the same tables as migrations/sqlite/deliveries/0001_init.sql;
-- storage/src/mysql/deliveries.rs). Times are BIGINT microseconds since the Unix epoch.
--
-- Webhook ids are keys (herald_core::ids::validate_key, at most 128 characters); dead letter ids
-- are time-ordered UUIDv7 strings, so `id < ? ORDER BY id DESC` pages newest first. Processed
-- marks are keyed by a channel message's delivery key (campaign id, batch, channel, part,
-- attempt, and a replay's dead letter id: under 400 characters); they are purged by time on the
-- `at` index in bounded deletes. Binary collations compare keys byte for byte, as SQLite does.

CREATE TABLE IF NOT EXISTS webhooks (
    id          VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    spec        LONGTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS dead_letters (
    id           VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    channel      VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    spec         LONGTEXT NOT NULL,
    replayed_at  BIGINT NULL,
    PRIMARY KEY (id),
    KEY dead_letters_by_channel (channel, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS processed_messages (
    msg_key     VARCHAR(700) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (msg_key),
    KEY processed_messages_by_time (at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
