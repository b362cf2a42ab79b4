-- Dispatcher checkpoints (resume after a crash) and event rules.
ALTER TABLE campaigns ADD COLUMN next_batch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN after_user TEXT;
ALTER TABLE campaigns ADD COLUMN batching_done INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS rules (
    event_type  TEXT PRIMARY KEY NOT NULL,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
