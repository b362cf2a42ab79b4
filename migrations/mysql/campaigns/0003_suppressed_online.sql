-- Presence-aware push (`push_when: "offline"`): pushes not sent because the recipient was
-- looking at the inbox, counted per campaign, channel and shard beside queued, sent and failed.
ALTER TABLE campaign_channel_counters ADD COLUMN suppressed_online BIGINT NOT NULL DEFAULT 0;
