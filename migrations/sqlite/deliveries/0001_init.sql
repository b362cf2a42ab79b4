-- The push gateway's state: webhook subscriptions, dead letters, processed-message marks.
CREATE TABLE IF NOT EXISTS webhooks (
    id          TEXT PRIMARY KEY NOT NULL,
    spec        TEXT NOT NULL,           -- the Webhook as JSON (url, secret, categories)
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dead_letters (
    id           TEXT PRIMARY KEY NOT NULL, -- UUIDv7: time-ordered
    channel      TEXT NOT NULL,
    spec         TEXT NOT NULL,             -- the DeadLetter as JSON
    replayed_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_by_channel ON dead_letters (channel, id);

CREATE TABLE IF NOT EXISTS processed_messages (
    key         TEXT PRIMARY KEY NOT NULL,  -- ChannelMessage::delivery_key
    at          INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processed_messages_by_time ON processed_messages (at);
