//! A statement built at run time (its text and its bound values), which runs either on a sqlx
//! connection (writes, and reads inside a write transaction) or on a reader connection
//! ([`super::readers`]): one builder, so a clause is written once for both paths.

use sqlx::sqlite::SqliteArguments;
use sqlx::Arguments;

/// A bound value.
#[derive(Debug, Clone)]
pub(crate) enum Bound {
    Int(i64),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Bound {
    fn from(v: i64) -> Self {
        Bound::Int(v)
    }
}

impl From<f64> for Bound {
    fn from(v: f64) -> Self {
        Bound::Float(v)
    }
}

impl From<&str> for Bound {
    fn from(v: &str) -> Self {
        Bound::Text(v.to_owned())
    }
}

impl From<String> for Bound {
    fn from(v: String) -> Self {
        Bound::Text(v)
    }
}

impl From<Vec<u8>> for Bound {
    fn from(v: Vec<u8>) -> Self {
        Bound::Blob(v)
    }
}

impl rusqlite::ToSql for Bound {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput;
        Ok(match self {
            Bound::Int(v) => ToSqlOutput::from(*v),
            Bound::Float(v) => ToSqlOutput::from(*v),
            Bound::Text(v) => ToSqlOutput::from(v.as_str()),
            Bound::Blob(v) => ToSqlOutput::from(v.as_slice()),
        })
    }
}

/// Statement text with `?` placeholders and their values, in order.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    pub binds: Vec<Bound>,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Sql {
            text: text.to_owned(),
            binds: Vec::new(),
        }
    }

    /// Appends statement text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind(&mut self, value: impl Into<Bound>) -> &mut Self {
        self.text.push('?');
        self.binds.push(value.into());
        self
    }

    /// The values as sqlx's arguments (borrowed: the statement outlives the query).
    pub fn args(&self) -> SqliteArguments<'_> {
        let mut args = SqliteArguments::default();
        for b in &self.binds {
            // Adding a value SQLite can take cannot fail: the error is for types whose
            // encoding fails, and these encode by value or by reference.
            let added = match b {
                Bound::Int(v) => args.add(*v),
                Bound::Float(v) => args.add(*v),
                Bound::Text(v) => args.add(v.as_str()),
                Bound::Blob(v) => args.add(v.as_slice()),
            };
            debug_assert!(added.is_ok());
        }
        args
    }

    /// The statement as a sqlx query.
    pub fn query(&self) -> sqlx::query::Query<'_, sqlx::Sqlite, SqliteArguments<'_>> {
        sqlx::query_with(&self.text, self.args())
    }

    /// The statement as a sqlx query whose rows decode as `T`.
    pub fn query_as<T>(&self) -> sqlx::query::QueryAs<'_, sqlx::Sqlite, T, SqliteArguments<'_>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    {
        sqlx::query_as_with(&self.text, self.args())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_value_gets_one_placeholder_in_order() {
        let mut sql = Sql::new("SELECT ");
        sql.bind(1_i64)
            .push(", ")
            .bind(0.5_f64)
            .push(", ")
            .bind("a")
            .push(", ")
            .bind(vec![1u8]);
        assert_eq!(sql.text, "SELECT ?, ?, ?, ?");
        assert!(matches!(
            sql.binds.as_slice(),
            [Bound::Int(1), Bound::Float(f), Bound::Text(t), Bound::Blob(b)]
                if *f == 0.5 && t == "a" && b == &[1]
        ));
    }
}
