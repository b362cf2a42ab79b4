-- Campaigns by creation time: what the analytics summary (CampaignStore::campaign_stats)
-- reads for a window.
CREATE INDEX IF NOT EXISTS campaigns_by_created ON campaigns (created_at);
