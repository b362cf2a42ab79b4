//! Schema files of `migrations/<engine>/<port>/`, compiled into the binary so `herald migrate`
//! needs nothing beside it.

/// One schema version of one port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub version: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// The statements of the file, split on `;` at the end of a line, comments removed.
    pub fn statements(&self) -> impl Iterator<Item = String> + '_ {
        let cleaned: String = self
            .sql
            .lines()
            .map(|l| match l.find("--") {
                Some(i) => l[..i].trim_end(),
                None => l.trim_end(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        cleaned
            .split(";\n")
            .map(|s| s.trim().trim_end_matches(';').trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .into_iter()
    }
}

macro_rules! migration {
    ($engine:literal, $port:literal, $version:literal) => {
        $crate::migrations::Migration {
            version: $version,
            sql: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../migrations/",
                $engine,
                "/",
                $port,
                "/",
                $version,
                ".sql"
            )),
        }
    };
}
pub(crate) use migration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_split_at_line_ends_and_comments_dropped() {
        let m = Migration {
            version: "0001",
            sql: "-- head\nCREATE TABLE a (x TEXT); -- trailing\nCREATE INDEX i ON a (x);\n",
        };
        let s: Vec<String> = m.statements().collect();
        assert_eq!(
            s,
            vec!["CREATE TABLE a (x TEXT)", "CREATE INDEX i ON a (x)"]
        );
    }
}
