-- Digests of event rules (`digest: {key, window_s}`), as migrations/sqlite/campaigns/0009_digests.sql:
-- a user's events of one type and key value collected for a window, then sent as one
-- notification (usecases/src/digests.rs). Adds lock the digest's head row (`digest_heads`,
-- SELECT ... FOR UPDATE), so adds of one digest are serialised and concurrent first events open
-- one digest. Sending closes the digest (`closed_at`) and drops its head.
CREATE TABLE IF NOT EXISTS digests (
    id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    event_type  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id     VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    key_value   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    window_end  BIGINT NOT NULL,
    count       BIGINT NOT NULL DEFAULT 0,
    closed_at   BIGINT NULL,
    PRIMARY KEY (id),
    KEY digests_by_window_end (window_end)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS digest_heads (
    event_type  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id     VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    key_value   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    digest_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    window_end  BIGINT NOT NULL,
    PRIMARY KEY (event_type, user_id, key_value)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS digest_events (
    digest_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    seq         BIGINT NOT NULL,
    event_key   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
    data        LONGTEXT NOT NULL,
    PRIMARY KEY (digest_id, seq),
    UNIQUE KEY digest_events_by_key (digest_id, event_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
