-- Recipients whose content did not render, and batches given up after their attempts: counted
-- on the campaign, with a small sample of the reasons.
ALTER TABLE campaigns ADD COLUMN failed_render INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN failed_batches INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS campaign_failures (
    campaign_id  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    batch_no     INTEGER NOT NULL,
    user_id      TEXT,
    reason       TEXT NOT NULL,
    PRIMARY KEY (campaign_id, seq)
) WITHOUT ROWID;
