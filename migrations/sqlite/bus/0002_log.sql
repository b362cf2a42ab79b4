-- The bus as a log: each message is stored once in bus_log, and each subscribed group has a
-- pending row per message it has not committed (bus_pending). Committing deletes the pending
-- row; the log row stays for the retention period, so a group can be moved back and replay it
-- (`herald bus replay`). See storage/src/sqlite/bus.rs for the design.
CREATE TABLE IF NOT EXISTS bus_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    msg_key      TEXT,
    payload      BLOB NOT NULL
);
-- Replay from a time, per topic.
CREATE INDEX IF NOT EXISTS bus_log_topic_time ON bus_log (topic, published_at);

-- sub: the subscription's topic (a topic, or a family pattern such as `channel.>`).
-- Small rows without the payload: leasing rewrites them in place.
CREATE TABLE IF NOT EXISTS bus_pending (
    sub        TEXT NOT NULL,
    grp        TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sub, grp, seq)
) WITHOUT ROWID;
-- Ready rows of a group in (visible_at, seq) order (the primary key's seq ends every entry).
CREATE INDEX IF NOT EXISTS bus_pending_ready ON bus_pending (sub, grp, visible_at);

-- Messages queued by the previous layout (one copy per group) keep their sequence number.
INSERT OR IGNORE INTO bus_log (seq, topic, published_at, msg_key, payload)
    SELECT seq, topic, published_at, msg_key, payload FROM bus_queue;
INSERT OR IGNORE INTO bus_pending (sub, grp, seq, visible_at, attempts)
    SELECT topic, grp, seq, visible_at, attempts FROM bus_queue;
DROP TABLE IF EXISTS bus_queue;
