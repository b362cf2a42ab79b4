-- Inbox store: personal notification rows, newest first per user.
CREATE TABLE IF NOT EXISTS notifications (
    user_id      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    id           BLOB NOT NULL,              -- 16-byte UUID
    campaign_id  TEXT,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    category     TEXT,
    data         TEXT NOT NULL DEFAULT 'null',
    read_at      INTEGER,
    dismissed_at INTEGER,
    PRIMARY KEY (user_id, created_at, id)
) WITHOUT ROWID;
-- Idempotent writes look a row up by id alone.
CREATE UNIQUE INDEX IF NOT EXISTS notifications_by_id ON notifications (id);
CREATE INDEX IF NOT EXISTS notifications_by_age ON notifications (created_at);
