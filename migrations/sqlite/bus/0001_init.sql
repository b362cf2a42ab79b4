-- Durable bus: one queue row per (subscribed group, message), leased by visible_at.
-- See storage/src/sqlite/bus.rs for the design.
CREATE TABLE IF NOT EXISTS bus_subscriptions (
    topic  TEXT NOT NULL,
    grp    TEXT NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;

-- AUTOINCREMENT: a seq is never reused, even after the newest row is acked, so a stale
-- receipt ("seq:attempt") can never match a different message.
-- Column order: the lease state (visible_at, attempts) comes before the payload. SQLite rewrites
-- a row in place, writing only the pages that changed, when its size stays the same, as it does
-- on the first lease (attempts 0 -> 1 are both zero-byte integers); with the lease state first,
-- that is the row's first page and not the payload's overflow pages (measured for 40 KB
-- payloads: about 0.5 KB of WAL per lease instead of 4.6 KB with the payload in the middle).
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
