-- Read watermarks: "mark all read" moves the user's watermark instead of updating every
-- unread row. A row is read when it has its own read_at or when its created_at is at or below
-- the watermark (core/src/ports.rs, InboxStore::mark_all_read). The unread count reads the
-- newest rows above the watermark on the primary key, so the (user_id, read_at,
-- dismissed_at) index, which every fan-out write paid for, goes.
CREATE TABLE IF NOT EXISTS inbox_read_marks (
    user_id       VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    read_through  BIGINT NOT NULL
) ENGINE = InnoDB;

ALTER TABLE notifications DROP INDEX notifications_unread;
