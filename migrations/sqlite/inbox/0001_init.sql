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
-- No index on id alone: ids are derived from campaign and user and rows carry the
-- campaign's timestamp, so a replayed row hits the primary key; reads by id come with the
-- user id and stay inside the user's range, as in a wide-column store.
CREATE INDEX IF NOT EXISTS notifications_by_age ON notifications (created_at);
