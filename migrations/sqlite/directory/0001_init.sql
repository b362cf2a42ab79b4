-- Directory: users, preferences, devices, segments, templates.
-- Times are INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE IF NOT EXISTS users (
    id          TEXT PRIMARY KEY NOT NULL,
    email       TEXT,
    phone       TEXT,
    attributes  TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS preferences (
    user_id     TEXT PRIMARY KEY NOT NULL,
    prefs       TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS devices (
    token        TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL,
    platform     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_by_user ON devices (user_id);
CREATE INDEX IF NOT EXISTS devices_by_last_use ON devices (last_used_at);

CREATE TABLE IF NOT EXISTS segments (
    name        TEXT PRIMARY KEY NOT NULL,
    filter      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS templates (
    id          TEXT PRIMARY KEY NOT NULL,
    content     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
