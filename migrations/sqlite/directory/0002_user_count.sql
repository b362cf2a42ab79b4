-- How many users there are, kept by triggers in the transaction of every insert and delete, so
-- sizing an `all` audience reads one row instead of counting: COUNT(*) scans the whole primary
-- key, seconds at tens of millions of users. An upsert that finds its row updates it (no
-- INSERT trigger fires), so the count moves only when a user is added or removed. The trigger
-- bodies stay on one line: the migration runner splits statements at ";" + newline.
CREATE TABLE IF NOT EXISTS directory_stats (
    name   TEXT PRIMARY KEY NOT NULL,
    value  INTEGER NOT NULL
) WITHOUT ROWID;

INSERT OR IGNORE INTO directory_stats (name, value) SELECT 'users', COUNT(*) FROM users;

CREATE TRIGGER IF NOT EXISTS users_counted_on_insert AFTER INSERT ON users BEGIN UPDATE directory_stats SET value = value + 1 WHERE name = 'users'; END;

CREATE TRIGGER IF NOT EXISTS users_counted_on_delete AFTER DELETE ON users BEGIN UPDATE directory_stats SET value = value - 1 WHERE name = 'users'; END;
