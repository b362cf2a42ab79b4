-- Delayed messages: kept until due, then published on the bus (storage/src/sqlite/delays.rs).
-- `due` and `scheduled_due` are Unix microseconds; `due` moves to the end of a claim's lease
-- while a publisher holds the message, `scheduled_due` keeps what it was scheduled for.
-- `claim` is the token of the claim holding it (NULL while unclaimed): removal is fenced by it.
CREATE TABLE IF NOT EXISTS delayed_messages (
    id            TEXT PRIMARY KEY,
    due           INTEGER NOT NULL,
    scheduled_due INTEGER NOT NULL,
    claim         TEXT,
    topic         TEXT NOT NULL,
    msg_key       TEXT,
    payload       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS delayed_messages_due ON delayed_messages (due);
