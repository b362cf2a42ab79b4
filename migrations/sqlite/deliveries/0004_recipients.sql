-- The latest outcome of each recipient per campaign and channel (the push gateway's delivery
-- reports, recorded by the result counter): what `GET /v1/campaigns/{id}/recipients/{user_id}`
-- says a channel did for a user. A record of a later attempt replaces an earlier one. Purged
-- with the delivery log (analytics.retention_days).
CREATE TABLE IF NOT EXISTS recipient_outcomes (
    campaign_id    TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    channel        TEXT NOT NULL,
    status         TEXT NOT NULL,
    sent           INTEGER NOT NULL DEFAULT 0,
    reason         TEXT,
    dead_letter_id TEXT,
    attempt        INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, user_id, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipient_outcomes_by_time ON recipient_outcomes (at);
