-- Seen and archived (issue: inbox feed states). A row is seen when it has its own seen_at or
-- read_at, or when its created_at is at or below the user's seen or read watermark; archived
-- rows leave the default view and the counts but stay readable (`archived=include|only`).
-- "Mark all seen" moves seen_through as "mark all read" moves read_through; a user who only
-- ever marked everything seen has read_through -1 (before every row).
ALTER TABLE notifications ADD COLUMN seen_at INTEGER;
ALTER TABLE notifications ADD COLUMN archived_at INTEGER;
ALTER TABLE inbox_read_marks ADD COLUMN seen_through INTEGER;
