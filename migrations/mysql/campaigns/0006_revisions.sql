-- The latest revision of each changed campaign (migrations/sqlite/campaigns/0011_revisions.sql
-- says what they are for).
CREATE TABLE IF NOT EXISTS campaign_revisions (
    campaign_id   VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    revision      INT NOT NULL,
    row_time      BIGINT NULL,
    broadcast_id  BINARY(16) NULL,
    content       MEDIUMTEXT NOT NULL,
    data          MEDIUMTEXT NOT NULL,
    revised_at    BIGINT NOT NULL,
    listed_at     BIGINT NOT NULL,
    KEY campaign_revisions_by_listed_at (listed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
