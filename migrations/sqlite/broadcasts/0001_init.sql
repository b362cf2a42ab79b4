-- Broadcast store: broadcasts stored once, and sparse per-user state.
CREATE TABLE IF NOT EXISTS broadcasts (
    id          BLOB PRIMARY KEY NOT NULL,
    status      TEXT NOT NULL,
    starts_at   INTEGER NOT NULL,
    expires_at  INTEGER,
    spec        TEXT NOT NULL,               -- the whole broadcast as JSON
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS broadcasts_by_status ON broadcasts (status, starts_at);

CREATE TABLE IF NOT EXISTS broadcast_user_state (
    user_id      TEXT NOT NULL,
    broadcast_id BLOB NOT NULL,
    read_at      INTEGER,
    dismissed_at INTEGER,
    PRIMARY KEY (user_id, broadcast_id)
) WITHOUT ROWID;
