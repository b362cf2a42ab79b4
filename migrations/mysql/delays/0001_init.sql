-- Delayed messages on MySQL 8 / MariaDB 10.11: kept until due, then published on the bus (the
-- same table as migrations/sqlite/delays/0001_init.sql; storage/src/mysql/delays.rs).
--
-- `due` and `scheduled_due` are BIGINT microseconds since the Unix epoch; `due` moves to the
-- end of a claim's lease while a publisher holds the row, `scheduled_due` keeps what it was
-- scheduled for. `claim` is the claiming publisher's token (NULL while unclaimed); removal is
-- fenced by it. Claims read `WHERE due <= ? ORDER BY due` on the `due` index with `FOR UPDATE
-- SKIP LOCKED`, so publishers on several nodes take disjoint rows without waiting on each other.
-- Ids are a topic and a delivery key (ASCII: campaign ids, numbers, key characters), binary
-- collated so that two ids differing in case stay two rows.

CREATE TABLE IF NOT EXISTS delayed_messages (
    id            VARCHAR(700) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    due           BIGINT NOT NULL,
    scheduled_due BIGINT NOT NULL,
    claim         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    topic         VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    msg_key       VARCHAR(700) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    payload       LONGBLOB NOT NULL,
    PRIMARY KEY (id),
    KEY delayed_messages_due (due)
) ENGINE = InnoDB;
