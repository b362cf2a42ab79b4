-- Presence-aware push (`push_when: "offline"`): pushes not sent because the recipient was
-- looking at the inbox, counted per campaign and channel beside queued, sent and failed.
ALTER TABLE campaign_deliveries ADD COLUMN suppressed_online INTEGER NOT NULL DEFAULT 0;
