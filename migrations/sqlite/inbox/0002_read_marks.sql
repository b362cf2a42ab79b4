-- Read watermarks: "mark all read" moves the user's watermark instead of updating every
-- unread row. A row is read when it has its own read_at or when its created_at is at or below
-- the watermark (core/src/ports.rs, InboxStore::mark_all_read).
CREATE TABLE IF NOT EXISTS inbox_read_marks (
    user_id      TEXT PRIMARY KEY NOT NULL,
    read_through INTEGER NOT NULL
) WITHOUT ROWID;
