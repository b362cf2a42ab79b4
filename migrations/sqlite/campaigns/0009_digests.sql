-- Digests of event rules (`digest: {key, window_s}`): a user's events of one type and key value
-- collected for a window, then sent as one notification (usecases/src/digests.rs).
-- `digest_heads` points at the open digest of each (event type, user, key value): the one row
-- every add of that digest writes, so adds of one digest are serialised and concurrent first
-- events open one digest. Sending closes the digest (`closed_at`) and drops its head.
CREATE TABLE IF NOT EXISTS digests (
    id          TEXT PRIMARY KEY NOT NULL,
    event_type  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    key_value   TEXT NOT NULL,
    window_end  INTEGER NOT NULL,
    count       INTEGER NOT NULL DEFAULT 0,
    closed_at   INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS digests_by_window_end ON digests (window_end);

CREATE TABLE IF NOT EXISTS digest_heads (
    event_type  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    key_value   TEXT NOT NULL,
    digest_id   TEXT NOT NULL,
    window_end  INTEGER NOT NULL,
    PRIMARY KEY (event_type, user_id, key_value)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS digest_events (
    digest_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event_key   TEXT,
    data        TEXT NOT NULL,
    PRIMARY KEY (digest_id, seq)
) WITHOUT ROWID;
-- Duplicate events (same identity) in one digest; keys that are NULL never collide.
CREATE UNIQUE INDEX IF NOT EXISTS digest_events_by_key ON digest_events (digest_id, event_key);
