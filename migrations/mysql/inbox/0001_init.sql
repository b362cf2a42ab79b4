-- The inbox store on MySQL 8 / MariaDB 10.11, for deployments below ScyllaDB's scale (the same
-- rows as migrations/sqlite/inbox/0001_init.sql; storage/src/mysql/inbox.rs). Times are BIGINT
-- microseconds since the Unix epoch.
--
-- Clustered by (user_id, created_at, id): a page of one user's inbox, newest first, is one
-- primary-key range read, keyset-paged on (created_at, id). The table is partitioned by user
-- (KEY partitioning hashes user_id), so a user's rows live in one partition and the per-user
-- reads prune to it, while retention deletes run partition by partition on the age index.
--
-- Secondary indexes:
-- - (user_id, id): read, dismiss and get address a row by user and id; ids are derived from
--   campaign and user, so this stays inside the user's range as in a wide-column store;
-- - (user_id, read_at, dismissed_at): the unread count and "mark all read" touch only the
--   user's unread rows (a range of this index), not their whole history;
-- - (created_at): retention.
-- KEY partitioning needs every unique key to hold the partitioning column, which the primary
-- key does.

CREATE TABLE IF NOT EXISTS notifications (
    user_id       VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_at    BIGINT NOT NULL,
    id            BINARY(16) NOT NULL,
    campaign_id   VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    title         MEDIUMTEXT NOT NULL,
    body          MEDIUMTEXT NOT NULL,
    category      VARCHAR(255) NULL,
    data          LONGTEXT NOT NULL,
    read_at       BIGINT NULL,
    dismissed_at  BIGINT NULL,
    PRIMARY KEY (user_id, created_at, id),
    KEY notifications_by_id (user_id, id),
    KEY notifications_unread (user_id, read_at, dismissed_at),
    KEY notifications_by_age (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci
  PARTITION BY KEY (user_id) PARTITIONS 16;
