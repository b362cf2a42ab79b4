-- Directory on MySQL 8 / MariaDB 10.11: users, preferences, devices, segments, templates.
-- The same tables as migrations/sqlite/directory/0001_init.sql.
--
-- Times are BIGINT microseconds since the Unix epoch (UTC), as in every engine.
--
-- Key columns (ids, names) are VARCHAR(128) in utf8mb4_bin: they compare by code point, which
-- for UTF-8 is byte order, like SQLite's BINARY collation, so `id > ? ORDER BY id` keyset
-- paging visits ids in the order every other engine does, and ids differing only in case stay
-- distinct. utf8mb4_bin pads with spaces when comparing, but keys cannot hold spaces
-- (herald_core::ids::validate_key). 128 characters is the longest key validate_key accepts.
--
-- JSON documents (attributes, prefs, filter, content) are LONGTEXT, which is what MariaDB's JSON
-- type is, and a column MySQL 8's JSON_EXTRACT / JSON_TYPE read the same way; the CHECK keeps
-- rows the filter SQL could not parse out (MySQL 8.0.16+ and MariaDB enforce it).
--
-- Device tokens are up to 4096 characters, far over InnoDB's 3072-byte key limit, and a prefix
-- index cannot be unique. The primary key is therefore token_hash = UNHEX(SHA2(token, 256)),
-- the SHA-256 of the token's UTF-8 bytes, computed by the adapter's SQL on every write and
-- lookup: exact (no prefix collisions between long web-push endpoints sharing a prefix), fixed
-- 32 bytes, so the secondary indexes that carry it stay small.
--
-- Indexes are declared inside CREATE TABLE: MySQL 8 has no CREATE INDEX IF NOT EXISTS, and each
-- statement must be safe to run again (DDL auto-commits, so a migration interrupted halfway is
-- simply rerun).

CREATE TABLE IF NOT EXISTS users (
    id          VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    email       VARCHAR(254) NULL,
    phone       VARCHAR(32) NULL,
    attributes  LONGTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT users_attributes_json CHECK (JSON_VALID(attributes))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS preferences (
    user_id     VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    prefs       LONGTEXT NOT NULL,
    PRIMARY KEY (user_id),
    CONSTRAINT preferences_prefs_json CHECK (JSON_VALID(prefs))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS devices (
    token_hash   BINARY(32) NOT NULL,
    token        VARCHAR(4096) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id      VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    platform     VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (token_hash),
    KEY devices_by_user (user_id),
    KEY devices_by_last_use (last_used_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS segments (
    name        VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    filter      LONGTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (name),
    CONSTRAINT segments_filter_json CHECK (JSON_VALID(filter))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS templates (
    id          VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    content     LONGTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT templates_content_json CHECK (JSON_VALID(content))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
