-- Batches given up after their attempts: kept whole (their users) so an operator can replay
-- them once the cause is fixed. A replay is recorded once (replay_done).
CREATE TABLE IF NOT EXISTS campaign_failed_batches (
    campaign_id  TEXT NOT NULL,
    batch_no     INTEGER NOT NULL,
    user_ids     TEXT NOT NULL,           -- JSON array
    reason       TEXT NOT NULL,
    failed_at    INTEGER NOT NULL,
    replayed_at  INTEGER,
    replay_done  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, batch_no)
) WITHOUT ROWID;
