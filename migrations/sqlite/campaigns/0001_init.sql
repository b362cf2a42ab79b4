-- Campaign store: campaigns, their counters, recorded batches, idempotency keys.
CREATE TABLE IF NOT EXISTS campaigns (
    id                    TEXT PRIMARY KEY NOT NULL,
    status                TEXT NOT NULL,
    strategy              TEXT NOT NULL,
    spec                  TEXT NOT NULL,          -- audience, content, channels, category, priority, data
    starts_at             INTEGER,
    expires_at            INTEGER,
    audience_size         INTEGER NOT NULL DEFAULT 0,
    batches_total         INTEGER NOT NULL DEFAULT 0,
    batches_done          INTEGER NOT NULL DEFAULT 0,
    notifications_written INTEGER NOT NULL DEFAULT 0,
    skipped_opted_out     INTEGER NOT NULL DEFAULT 0,
    deferred_quiet_hours  INTEGER NOT NULL DEFAULT 0,
    created_at            INTEGER NOT NULL,
    started_at            INTEGER,
    completed_at          INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS campaigns_by_status ON campaigns (status, id);
CREATE INDEX IF NOT EXISTS campaigns_due ON campaigns (status, starts_at);

CREATE TABLE IF NOT EXISTS campaign_deliveries (
    campaign_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    queued      INTEGER NOT NULL DEFAULT 0,
    sent        INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, channel)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS campaign_batches (
    campaign_id TEXT NOT NULL,
    batch_no    INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, batch_no)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS idempotency_keys (
    key           TEXT PRIMARY KEY NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER,
    body          BLOB,
    expires_at    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys (expires_at);
