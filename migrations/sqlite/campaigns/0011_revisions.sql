-- The latest revision of each campaign whose content was changed (`PATCH /v1/campaigns/{id}/
-- content`): the inbox renders the campaign's rows again with it at read time, the fan-out
-- renders what it has not written yet with it, the push gateway renders its sends not yet made
-- with it and replaces the pushes already sent. Read whole by every node, for the campaigns
-- whose rows may still be stored: `listed_at` (the rows' time, or the revision's time for a
-- campaign revised before it started) within the inbox retention.
CREATE TABLE IF NOT EXISTS campaign_revisions (
    campaign_id   TEXT PRIMARY KEY NOT NULL,
    revision      INTEGER NOT NULL,
    row_time      INTEGER,
    broadcast_id  BLOB,
    content       TEXT NOT NULL,
    data          TEXT NOT NULL,
    revised_at    INTEGER NOT NULL,
    listed_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS campaign_revisions_by_listed_at ON campaign_revisions (listed_at);
