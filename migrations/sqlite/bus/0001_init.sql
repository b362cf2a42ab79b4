-- Durable bus: one queue row per (subscribed group, message), leased by visible_at.
-- See storage/src/sqlite/bus.rs for the design.
CREATE TABLE IF NOT EXISTS bus_subscriptions (
    topic  TEXT NOT NULL,
    grp    TEXT NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;

-- AUTOINCREMENT: a seq is never reused, even after the newest row is acked, so a stale
-- receipt ("seq:attempt") can never match a different message.
-- Column order: the lease state (visible_at, attempts) comes before the payload so that leasing
-- a row whose payload spills into overflow pages rewrites only the row's first page.
CREATE TABLE IF NOT EXISTS bus_queue (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT NOT NULL,
    grp          TEXT NOT NULL,
    visible_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    published_at INTEGER NOT NULL,
    msg_key      TEXT,
    payload      BLOB NOT NULL
);
-- Ready rows of a (topic, group) in (visible_at, seq) order: seq is the rowid, which SQLite
-- appends to every index entry, so receive's ORDER BY visible_at, seq LIMIT n reads exactly n
-- index entries and needs no sort, and depth is a count over this index alone.
CREATE INDEX IF NOT EXISTS bus_queue_ready ON bus_queue (topic, grp, visible_at);
