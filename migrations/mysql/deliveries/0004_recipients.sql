-- The latest outcome of each recipient per campaign and channel, as
-- migrations/sqlite/deliveries/0004_recipients.sql: what `GET /v1/campaigns/{id}/recipients/
-- {user_id}` says a channel did for a user. A record of a later attempt replaces an earlier one.
-- Purged with the delivery log (analytics.retention_days).
CREATE TABLE IF NOT EXISTS recipient_outcomes (
    campaign_id    VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id        VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    channel        VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status         VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    sent           INT NOT NULL DEFAULT 0,
    reason         TEXT NULL,
    dead_letter_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    attempt        INT NOT NULL,
    at             BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, user_id, channel),
    KEY recipient_outcomes_by_time (at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
