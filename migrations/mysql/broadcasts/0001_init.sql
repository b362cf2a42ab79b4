-- The broadcast store on MySQL 8 / MariaDB 10.11: seed 004's `broadcasts` and
-- `broadcast_dismissals` tables, plus the per-user read state (storage/src/mysql/broadcasts.rs).
-- Times are BIGINT microseconds since the Unix epoch.
--
-- A broadcast is one row whatever its audience: the whole definition as JSON in `spec`, with
-- the columns the store filters on beside it (`status` is the source of truth on read). Open
-- broadcasts (scheduled or active) are few; `list_open` reads them on the status index.
--
-- Per-user state is sparse: a row exists only once a user reads or dismisses a broadcast.
-- Seed 004 keys dismissals by (broadcast_id, user_id); here the user comes first, because the
-- one read that matters is "every state of this user" on each inbox read, which is then one
-- primary-key range per table. Reads and dismissals are separate tables so each write is a
-- plain insert that keeps the first time (no read before the write, no row shared by both).

CREATE TABLE IF NOT EXISTS broadcasts (
    id          BINARY(16) NOT NULL,
    status      VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    starts_at   BIGINT NOT NULL,
    expires_at  BIGINT NULL,
    spec        LONGTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (id),
    KEY broadcasts_by_status (status, starts_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS broadcast_dismissals (
    user_id       VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    broadcast_id  BINARY(16) NOT NULL,
    dismissed_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, broadcast_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS broadcast_reads (
    user_id       VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    broadcast_id  BINARY(16) NOT NULL,
    read_at       BIGINT NOT NULL,
    PRIMARY KEY (user_id, broadcast_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
