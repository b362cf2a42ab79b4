-- Seen and archived for broadcasts, beside read and dismissed: still one sparse row per user
-- and broadcast they acted on. `archived_at` NULL again after an unarchive.
ALTER TABLE broadcast_user_state ADD COLUMN seen_at INTEGER;
ALTER TABLE broadcast_user_state ADD COLUMN archived_at INTEGER;
