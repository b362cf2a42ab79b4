-- Retracted campaigns (`DELETE /v1/campaigns/{id}/notifications`): one row each, final. The
-- inbox hides the rows of these campaigns at read time and the push gateway cancels their sends
-- not yet made; read whole by every node, for the campaigns whose rows may still be stored
-- (row_time within the inbox retention).
CREATE TABLE IF NOT EXISTS campaign_retractions (
    campaign_id   TEXT PRIMARY KEY NOT NULL,
    row_time      INTEGER NOT NULL,
    broadcast_id  BLOB,
    retracted_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS campaign_retractions_by_row_time ON campaign_retractions (row_time);
-- Sends not made because their campaign was retracted first.
ALTER TABLE campaign_deliveries ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
