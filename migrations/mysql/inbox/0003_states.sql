-- Seen and archived (the inbox feed states; migrations/sqlite/inbox/0003_states.sql says what
-- they mean). No index: every statement reads them inside one user's primary-key range.
-- "Mark all seen" moves seen_through as "mark all read" moves read_through; a user who only
-- ever marked everything seen has read_through -1 (before every row).
ALTER TABLE notifications ADD COLUMN seen_at BIGINT NULL, ADD COLUMN archived_at BIGINT NULL;
ALTER TABLE inbox_read_marks ADD COLUMN seen_through BIGINT NULL;
