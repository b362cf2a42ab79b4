-- Retracted campaigns (migrations/sqlite/campaigns/0010_retractions.sql says what they are for).
CREATE TABLE IF NOT EXISTS campaign_retractions (
    campaign_id   VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    row_time      BIGINT NOT NULL,
    broadcast_id  BINARY(16) NULL,
    retracted_at  BIGINT NOT NULL,
    KEY campaign_retractions_by_row_time (row_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
-- Sends not made because their campaign was retracted first.
ALTER TABLE campaign_channel_counters ADD COLUMN cancelled BIGINT NOT NULL DEFAULT 0;
