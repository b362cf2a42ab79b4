-- Delivery reports already added to the counters (one row per report key), so a redelivered
-- report never double counts.
CREATE TABLE IF NOT EXISTS campaign_delivery_reports (
    campaign_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    PRIMARY KEY (campaign_id, key)
) WITHOUT ROWID;
