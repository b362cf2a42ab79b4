//! The directory on MySQL 8 / MariaDB 10.11: users, preferences, devices, segments and
//! templates (schema and its reasons in `migrations/mysql/directory/0001_init.sql`).
//!
//! Batched writes are multi-row `INSERT ... ON DUPLICATE KEY UPDATE` statements in one
//! transaction, cut under the placeholder and packet limits; reads by many ids use chunked `IN`
//! lists; listings are keyset-paged on the binary-collated key. Upserts name the new row's
//! values with `VALUES(col)`, which both engines accept (MySQL 8.0.20+ deprecates it in favour
//! of a row alias that MariaDB does not have). Devices are keyed by `UNHEX(SHA2(token, 256))`.

use super::{
    chunks_by_size, open_pool, opt_text, retry_transient, text, time, MAX_PARAMS,
    MAX_STATEMENT_BYTES,
};
use crate::migrations::{migration, Migration};
use crate::time::micros;
use crate::{corrupt, db_error, BackendUrl};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::filter::{Filter, SqlDialect, SqlParam};
use herald_core::model::*;
use herald_core::ports::Directory;
use herald_core::{Error, Result};
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};
use std::collections::{HashMap, HashSet};

const MIGRATIONS: &[Migration] = &[migration!("mysql", "directory", "0001_init")];

/// Users written per multi-row INSERT at most (6 parameters each).
const USER_CHUNK: usize = MAX_PARAMS / 6;
/// Ids or tokens per `IN (...)` list.
const IN_CHUNK: usize = 1000;
/// Devices removed per statement by the stale-token cleanup, so one run never holds locks on
/// millions of rows (or blows up the undo log) at once.
const CLEANUP_BATCH: u64 = 5000;

/// The device key: SHA-256 of the token's UTF-8 bytes (see the schema).
const TOKEN_HASH: &str = "UNHEX(SHA2(?, 256))";
/// Devices per multi-row insert at most (six values each).
const DEVICE_CHUNK: usize = MAX_PARAMS / 6;
/// What registering a token its row already has changes: `created_at` stays if the same user
/// had it, the rest follows the new registration. `created_at` is assigned before `user_id`,
/// so it compares against the previous holder whether the engine applies assignments left to
/// right (MySQL, MariaDB) or all at once (MariaDB's SIMULTANEOUS_ASSIGNMENT mode).
const DEVICE_UPSERT: &str = " ON DUPLICATE KEY UPDATE \
     created_at = IF(user_id = VALUES(user_id), created_at, VALUES(created_at)), \
     user_id = VALUES(user_id), platform = VALUES(platform), \
     last_used_at = VALUES(last_used_at)";

pub struct MysqlDirectory {
    pool: MySqlPool,
}

impl MysqlDirectory {
    pub async fn open(url: &BackendUrl) -> Result<Self> {
        Ok(Self {
            pool: open_pool(url, "directory", 16, MIGRATIONS).await?,
        })
    }
}

const USER_COLUMNS: &str = "id, email, phone, attributes, created_at, updated_at";
const DEVICE_COLUMNS: &str = "token, user_id, platform, created_at, last_used_at";

fn user_from_row(row: &MySqlRow) -> Result<User> {
    user_keeping(row, &AttributeKeys::All)
}

/// A user with the attributes `keys` keeps.
fn user_keeping(row: &MySqlRow, keys: &AttributeKeys) -> Result<User> {
    Ok(User {
        id: text(row, "id")?,
        email: opt_text(row, "email")?,
        phone: opt_text(row, "phone")?,
        attributes: keys
            .decode(&text(row, "attributes")?)
            .map_err(|e| corrupt("user attributes", e))?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn segment_from_row(row: &MySqlRow) -> Result<Segment> {
    let value: serde_json::Value =
        serde_json::from_str(&text(row, "filter")?).map_err(|e| corrupt("segment filter", e))?;
    Ok(Segment {
        name: text(row, "name")?,
        filter: Filter::parse(&value).map_err(|e| corrupt("segment filter", e))?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn template_from_row(row: &MySqlRow) -> Result<Template> {
    Ok(Template {
        id: text(row, "id")?,
        content: serde_json::from_str(&text(row, "content")?)
            .map_err(|e| corrupt("template", e))?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn device_from_row(row: &MySqlRow) -> Result<Device> {
    Ok(Device {
        user_id: text(row, "user_id")?,
        platform: text(row, "platform")?
            .parse()
            .map_err(|e| corrupt("device platform", e))?,
        token: text(row, "token")?,
        created_at: time(row, "created_at")?,
        last_used_at: time(row, "last_used_at")?,
    })
}

/// Appends ` AND (<filter>)` with its parameters, or nothing for a match-all filter.
fn push_filter(qb: &mut QueryBuilder<'_, MySql>, filter: &Filter, now: DateTime<Utc>) {
    if filter.is_match_all() {
        return;
    }
    let frag = filter.to_sql(SqlDialect::Mysql, "attributes", now);
    qb.push(" AND (");
    // The fragment uses `?` placeholders in order; QueryBuilder binds in push order too.
    let mut params = frag.params.into_iter();
    let mut pieces = frag.sql.split('?').peekable();
    while let Some(piece) = pieces.next() {
        qb.push(piece);
        if pieces.peek().is_some() {
            match params.next() {
                Some(SqlParam::Text(s)) => qb.push_bind(s),
                Some(SqlParam::Int(i)) => qb.push_bind(i),
                Some(SqlParam::Float(f)) => qb.push_bind(f),
                None => qb.push("NULL"),
            };
        }
    }
    qb.push(")");
}

/// Rows of `select` whose `column` is among `ids`, one `IN` list per chunk.
async fn fetch_in<T>(
    pool: &MySqlPool,
    select: &str,
    column: &str,
    ids: &[String],
    map: impl Fn(&MySqlRow) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IN_CHUNK) {
        let mut qb = QueryBuilder::<MySql>::new(select);
        qb.push(" WHERE ").push(column).push(" IN (");
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id);
        }
        qb.push(")");
        for row in qb.build().fetch_all(pool).await.map_err(db_error)? {
            out.push(map(&row)?);
        }
    }
    Ok(out)
}

/// Appends `(UNHEX(SHA2(?, 256)), ...)` for `tokens`.
fn push_token_hashes<'a>(qb: &mut QueryBuilder<'a, MySql>, tokens: &'a [String]) {
    qb.push("(");
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            qb.push(", ");
        }
        qb.push("UNHEX(SHA2(").push_bind(token).push(", 256))");
    }
    qb.push(")");
}

/// Whether the user exists, holding a shared lock on their row until the transaction ends so
/// a concurrent `delete_user` cannot slip in between the check and the write that depends on
/// it (InnoDB's plain reads are lock-free snapshots).
async fn lock_user(
    conn: &mut MySqlConnection,
    user_id: &str,
) -> std::result::Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("SELECT 1 FROM users WHERE id = ? LOCK IN SHARE MODE")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
    )
}

#[async_trait]
impl Directory for MysqlDirectory {
    async fn ping(&self) -> Result<()> {
        super::ping(&self.pool).await
    }

    async fn upsert_users(&self, users: &[User]) -> Result<u64> {
        if users.is_empty() {
            return Ok(0);
        }
        let mut rows = Vec::with_capacity(users.len());
        for u in users {
            let attributes = serde_json::to_string(&u.attributes).map_err(|e| {
                Error::internal(format!("user `{}`: attributes do not serialise", u.id))
                    .with_source(e)
            })?;
            rows.push((u, attributes));
        }
        // Rows in key order, so concurrent batches lock them in the same order and do not
        // deadlock each other (the sort is stable: of two rows with one id the last still wins).
        rows.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let chunks = chunks_by_size(&rows, USER_CHUNK, MAX_STATEMENT_BYTES, |(u, attrs)| {
            u.id.len()
                + u.email.as_ref().map_or(0, String::len)
                + u.phone.as_ref().map_or(0, String::len)
                + attrs.len()
                + 64
        });
        let (pool, chunks) = (&self.pool, &chunks);
        retry_transient(move || async move {
            let mut tx = pool.begin().await?;
            for chunk in chunks {
                let mut qb = QueryBuilder::<MySql>::new(
                    "INSERT INTO users (id, email, phone, attributes, created_at, updated_at) ",
                );
                qb.push_values(chunk.iter(), |mut b, (u, attrs)| {
                    b.push_bind(&u.id)
                        .push_bind(&u.email)
                        .push_bind(&u.phone)
                        .push_bind(attrs)
                        .push_bind(micros(u.created_at))
                        .push_bind(micros(u.updated_at));
                });
                qb.push(
                    " ON DUPLICATE KEY UPDATE email = VALUES(email), phone = VALUES(phone), \
                     attributes = VALUES(attributes), updated_at = VALUES(updated_at)",
                );
                // Its shape depends on the batch: not worth a slot in the statement cache.
                qb.build().persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(users.len() as u64)
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn get_users_keeping(&self, ids: &[String], keys: &AttributeKeys) -> Result<Vec<User>> {
        let select = format!("SELECT {USER_COLUMNS} FROM users");
        fetch_in(&self.pool, &select, "id", ids, |row| {
            user_keeping(row, keys)
        })
        .await
    }

    async fn delete_user(&self, id: &str) -> Result<bool> {
        let pool = &self.pool;
        retry_transient(move || async move {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query("DELETE FROM users WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            for sql in [
                "DELETE FROM preferences WHERE user_id = ?",
                "DELETE FROM devices WHERE user_id = ?",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn page_users(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<User>> {
        let mut qb =
            QueryBuilder::<MySql>::new(format!("SELECT {USER_COLUMNS} FROM users WHERE id > "));
        qb.push_bind(after.unwrap_or(""));
        push_filter(&mut qb, filter, now);
        qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(db_error)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn page_user_ids(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut qb = QueryBuilder::<MySql>::new("SELECT id FROM users WHERE id > ");
        qb.push_bind(after.unwrap_or(""));
        push_filter(&mut qb, filter, now);
        qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(db_error)?;
        rows.iter().map(|r| text(r, "id")).collect()
    }

    async fn count_users(&self, filter: &Filter, now: DateTime<Utc>) -> Result<u64> {
        let mut qb = QueryBuilder::<MySql>::new("SELECT COUNT(*) AS n FROM users WHERE 1 = 1");
        push_filter(&mut qb, filter, now);
        let row = qb.build().fetch_one(&self.pool).await.map_err(db_error)?;
        Ok(row.try_get::<i64, _>("n").map_err(db_error)? as u64)
    }

    async fn put_segment(&self, segment: &Segment) -> Result<()> {
        sqlx::query(
            "INSERT INTO segments (name, filter, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE filter = VALUES(filter), updated_at = VALUES(updated_at)",
        )
        .bind(&segment.name)
        .bind(segment.filter.to_json().to_string())
        .bind(micros(segment.created_at))
        .bind(micros(segment.updated_at))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_segment(&self, name: &str) -> Result<Option<Segment>> {
        let row =
            sqlx::query("SELECT name, filter, created_at, updated_at FROM segments WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.as_ref().map(segment_from_row).transpose()
    }

    async fn list_segments(&self, after: Option<&str>, limit: u32) -> Result<Vec<Segment>> {
        let rows = sqlx::query(
            "SELECT name, filter, created_at, updated_at FROM segments WHERE name > ? \
             ORDER BY name LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(segment_from_row).collect()
    }

    async fn delete_segment(&self, name: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM segments WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn put_preferences(&self, user_id: &str, prefs: &Preferences) -> Result<bool> {
        let json = serde_json::to_string(prefs).map_err(|e| corrupt("preferences", e))?;
        let (pool, json) = (&self.pool, json.as_str());
        retry_transient(move || async move {
            let mut tx = pool.begin().await?;
            if !lock_user(&mut tx, user_id).await? {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO preferences (user_id, prefs) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE prefs = VALUES(prefs)",
            )
            .bind(user_id)
            .bind(json)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn get_preferences(&self, user_ids: &[String]) -> Result<HashMap<String, Preferences>> {
        let rows = fetch_in(
            &self.pool,
            "SELECT user_id, prefs FROM preferences",
            "user_id",
            user_ids,
            |row| {
                let prefs: Preferences = serde_json::from_str(&text(row, "prefs")?)
                    .map_err(|e| corrupt("preferences", e))?;
                Ok((text(row, "user_id")?, prefs))
            },
        )
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn put_device(&self, device: &Device) -> Result<bool> {
        let pool = &self.pool;
        retry_transient(move || async move {
            let mut tx = pool.begin().await?;
            if !lock_user(&mut tx, &device.user_id).await? {
                return Ok(false);
            }
            sqlx::query(&format!(
                "INSERT INTO devices (token_hash, token, user_id, platform, created_at, last_used_at) \
                 VALUES ({TOKEN_HASH}, ?, ?, ?, ?, ?){DEVICE_UPSERT}"
            ))
            .bind(&device.token)
            .bind(&device.token)
            .bind(&device.user_id)
            .bind(device.platform.as_str())
            .bind(micros(device.created_at))
            .bind(micros(device.last_used_at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn put_devices(&self, devices: &[Device]) -> Result<Vec<String>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<&str> = devices.iter().map(|d| d.user_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let (pool, ids) = (&self.pool, &ids);
        let known = retry_transient(move || async move {
            let mut tx = pool.begin().await?;
            // The users are share-locked in key order (as every batch locks them), so none is
            // deleted before its devices are in, and concurrent batches do not deadlock.
            let mut known: HashSet<String> = HashSet::with_capacity(ids.len());
            for chunk in ids.chunks(IN_CHUNK) {
                let mut qb = QueryBuilder::<MySql>::new("SELECT id FROM users WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") ORDER BY id LOCK IN SHARE MODE");
                for row in qb.build().persistent(false).fetch_all(&mut *tx).await? {
                    known.insert(row.try_get_unchecked::<String, _>(0)?);
                }
            }
            let registered: Vec<&Device> = devices
                .iter()
                .filter(|d| known.contains(&d.user_id))
                .collect();
            let chunks = chunks_by_size(&registered, DEVICE_CHUNK, MAX_STATEMENT_BYTES, |d| {
                2 * d.token.len() + d.user_id.len() + 64
            });
            for chunk in chunks {
                let mut qb = QueryBuilder::<MySql>::new(
                    "INSERT INTO devices (token_hash, token, user_id, platform, created_at, \
                     last_used_at) ",
                );
                qb.push_values(chunk.iter(), |mut b, d| {
                    b.push("UNHEX(SHA2(")
                        .push_bind_unseparated(&d.token)
                        .push_unseparated(", 256))")
                        .push_bind(&d.token)
                        .push_bind(&d.user_id)
                        .push_bind(d.platform.as_str())
                        .push_bind(micros(d.created_at))
                        .push_bind(micros(d.last_used_at));
                });
                qb.push(DEVICE_UPSERT);
                qb.build().persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(known)
        })
        .await?;
        Ok(ids
            .iter()
            .filter(|id| !known.contains(**id))
            .map(|id| (*id).to_owned())
            .collect())
    }

    async fn delete_device(&self, user_id: &str, token: &str) -> Result<bool> {
        let n = sqlx::query(&format!(
            "DELETE FROM devices WHERE token_hash = {TOKEN_HASH} AND user_id = ?"
        ))
        .bind(token)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected();
        Ok(n > 0)
    }

    async fn list_devices(&self, user_ids: &[String]) -> Result<Vec<Device>> {
        let select = format!("SELECT {DEVICE_COLUMNS} FROM devices");
        fetch_in(&self.pool, &select, "user_id", user_ids, device_from_row).await
    }

    async fn delete_tokens(&self, tokens: &[String]) -> Result<u64> {
        let mut total = 0;
        for chunk in tokens.chunks(IN_CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new("DELETE FROM devices WHERE token_hash IN ");
            push_token_hashes(&mut qb, chunk);
            total += qb
                .build()
                .execute(&self.pool)
                .await
                .map_err(db_error)?
                .rows_affected();
        }
        Ok(total)
    }

    async fn touch_tokens(&self, tokens: &[String], at: DateTime<Utc>) -> Result<()> {
        for chunk in tokens.chunks(IN_CHUNK) {
            let mut qb = QueryBuilder::<MySql>::new("UPDATE devices SET last_used_at = ");
            qb.push_bind(micros(at)).push(" WHERE token_hash IN ");
            push_token_hashes(&mut qb, chunk);
            qb.build().execute(&self.pool).await.map_err(db_error)?;
        }
        Ok(())
    }

    async fn delete_devices_unused_since(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut total = 0;
        loop {
            // Oldest first, a batch per statement and transaction; the batch size is our own
            // constant, so it is written into the SQL.
            let n = sqlx::query(&format!(
                "DELETE FROM devices WHERE last_used_at < ? ORDER BY last_used_at \
                 LIMIT {CLEANUP_BATCH}"
            ))
            .bind(micros(before))
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
            total += n;
            if n < CLEANUP_BATCH {
                return Ok(total);
            }
        }
    }

    async fn put_template(&self, template: &Template) -> Result<()> {
        let content =
            serde_json::to_string(&template.content).map_err(|e| corrupt("template", e))?;
        sqlx::query(
            "INSERT INTO templates (id, content, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE content = VALUES(content), updated_at = VALUES(updated_at)",
        )
        .bind(&template.id)
        .bind(content)
        .bind(micros(template.created_at))
        .bind(micros(template.updated_at))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_template(&self, id: &str) -> Result<Option<Template>> {
        let row =
            sqlx::query("SELECT id, content, created_at, updated_at FROM templates WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.as_ref().map(template_from_row).transpose()
    }

    async fn list_templates(&self, after: Option<&str>, limit: u32) -> Result<Vec<Template>> {
        let rows = sqlx::query(
            "SELECT id, content, created_at, updated_at FROM templates WHERE id > ? \
             ORDER BY id LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(template_from_row).collect()
    }

    async fn delete_template(&self, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM templates WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::chunks_by_size;

    #[test]
    fn chunks_respect_both_the_row_and_the_byte_budget() {
        let items = [3usize, 3, 3, 10, 1, 1, 1, 1];
        let lens = |max_rows, max_bytes| -> Vec<usize> {
            chunks_by_size(&items, max_rows, max_bytes, |s| *s)
                .iter()
                .map(|c| c.len())
                .collect()
        };
        assert_eq!(lens(100, 100), vec![8]);
        assert_eq!(lens(3, 100), vec![3, 3, 2]);
        // The oversized item gets a run of its own.
        assert_eq!(lens(100, 6), vec![2, 1, 1, 4]);
        assert!(chunks_by_size(&[] as &[usize], 10, 10, |s| *s).is_empty());
    }
}
