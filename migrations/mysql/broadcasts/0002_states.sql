-- Seen and archived for broadcasts, per user and broadcast they acted on, beside the reads and
-- dismissals (one sparse row each; `archived_at` NULL again after an unarchive).
CREATE TABLE IF NOT EXISTS broadcast_views (
    user_id       VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    broadcast_id  BINARY(16) NOT NULL,
    seen_at       BIGINT NULL,
    archived_at   BIGINT NULL,
    PRIMARY KEY (user_id, broadcast_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
