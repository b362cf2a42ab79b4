//! Agreement property test for the audience filter DSL.
//!
//! `Filter::to_sql` and `Filter::matches` must select exactly the same users.
//! These tests generate random users (mixed-type attributes, missing keys,
//! nulls, case and trailing-space variants, ints, floats, booleans, RFC 3339
//! times) and random filters (every operator, nesting, `not`, relative
//! times), store the users in a real database and compare the ids selected by
//! `SELECT id FROM … WHERE <to_sql>` with the ids accepted in memory.
//!
//! SQLite always runs (in memory). MySQL/MariaDB runs only when
//! `HERALD_TEST_MYSQL_URL` is set, e.g. `mysql://root@127.0.0.1:3306/test`,
//! in a uniquely named table that is dropped afterwards.

use std::collections::BTreeSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use herald_core::filter::{
    sqlite_typed_value, AttrType, Filter, SqlDialect, SqlFragment, SqlParam,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use sqlx::mysql::MySqlConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Executor};
use tokio::sync::Mutex;

/// Proptest cases per backend; each case checks [`FILTERS_PER_CASE`] filters.
const CASES: u32 = 128;
const FILTERS_PER_CASE: usize = 8;
const MAX_USERS: usize = 40;

/// Attribute keys users may carry; filters also ask for `ghost`, which no
/// user ever has.
const KEYS: &[&str] = &["tier", "locale", "score", "age", "active", "last_active_at"];

/// The fixed evaluation time (the sub-second part must be truncated away).
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 15, 12, 30, 45)
        .single()
        .expect("valid date")
        + TimeDelta::milliseconds(789)
}

const RELATIVE_TIMES: &[&str] = &[
    "now", "now-30d", "now-1d", "now+1h", "now-45m", "now-2w", "now-90s", "now+0s",
];

/// Offsets (seconds) of the relative times above, so that stored times hit
/// their boundaries exactly.
const SPECIAL_OFFSETS: &[i64] = &[0, -30 * 86_400, -86_400, 3_600, -45 * 60, -14 * 86_400, -90];

const STRINGS: &[&str] = &[
    "premium",
    "Premium",
    "PREMIUM",
    "premium ",
    " premium",
    "basic",
    "",
    " ",
    "en",
    "EN",
    "en ",
    "en-US",
    "de",
    "é",
    "É",
    "e\u{301}",
    "Zürich",
    "日本",
    "10",
    "9",
    "5.0",
    "true",
    "null",
    "a\"b",
    "back\\slash",
    "tab\there",
    "line\nbreak",
    "2024-05-16T12:30:45Z",
    "2024-05-16 12:30:45",
    "now-30d ",
];

const INTS: &[i64] = &[
    0,
    1,
    -1,
    5,
    9,
    10,
    100,
    9_007_199_254_740_992,
    9_007_199_254_740_993,
    i64::MAX,
    i64::MIN,
];

const FLOATS: &[f64] = &[
    0.5,
    5.0,
    10.0,
    -0.0,
    0.1,
    0.2,
    0.30000000000000004,
    2.5,
    99.99,
    1e20,
    1.5e-7,
    9_007_199_254_740_992.0,
    9.223_372_036_854_776e18,
    -1e300,
];

fn time_string(offset_seconds: i64) -> String {
    (now() + TimeDelta::seconds(offset_seconds))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn arb_time_string() -> BoxedStrategy<String> {
    prop_oneof![
        (prop::sample::select(SPECIAL_OFFSETS), -1i64..=1)
            .prop_map(|(offset, nudge)| time_string(offset + nudge)),
        (-60 * 86_400i64..2 * 86_400).prop_map(time_string),
    ]
    .boxed()
}

fn arb_string() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(STRINGS).prop_map(str::to_owned),
        3 => arb_time_string(),
        2 => "[abAB ]{0,3}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn arb_number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => prop::sample::select(INTS).prop_map(Value::from),
        3 => (-12i64..=12).prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        3 => prop::sample::select(FLOATS).prop_map(Value::from),
        2 => (-48i32..=48).prop_map(|k| Value::from(f64::from(k) / 4.0)),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
    ]
    .boxed()
}

/// Any attribute value, including types no operand can have.
fn arb_attribute_value() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => arb_string().prop_map(Value::String),
        5 => arb_number(),
        2 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => Just(json!([1, "premium"])),
        1 => Just(json!({"tier": "premium"})),
    ]
    .boxed()
}

fn arb_user() -> impl Strategy<Value = Map<String, Value>> {
    let per_key: Vec<_> = KEYS
        .iter()
        .map(|key| prop::option::weighted(0.7, arb_attribute_value()).prop_map(move |v| (*key, v)))
        .collect();
    per_key.prop_map(|entries| {
        entries
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key.to_owned(), v)))
            .collect()
    })
}

fn arb_filter_attr() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        12 => prop::sample::select(KEYS),
        1 => Just("ghost"),
    ]
}

/// A string operand: a literal or a relative time.
fn arb_string_operand() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => arb_string().prop_map(Value::String),
        2 => prop::sample::select(RELATIVE_TIMES).prop_map(Value::from),
    ]
    .boxed()
}

fn arb_scalar_operand() -> BoxedStrategy<Value> {
    prop_oneof![
        5 => arb_string_operand(),
        4 => arb_number(),
        2 => any::<bool>().prop_map(Value::Bool),
    ]
    .boxed()
}

fn arb_ordered_operand() -> BoxedStrategy<Value> {
    prop_oneof![arb_string_operand(), arb_number()].boxed()
}

fn arb_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (arb_filter_attr(), prop::sample::select(&["eq", "ne"][..]), arb_scalar_operand())
            .prop_map(|(attr, op, v)| json!({"attr": attr, op: v})),
        4 => (
            arb_filter_attr(),
            prop::sample::select(&["lt", "lte", "gt", "gte"][..]),
            arb_ordered_operand()
        )
            .prop_map(|(attr, op, v)| json!({"attr": attr, op: v})),
        2 => (arb_filter_attr(), prop::collection::vec(arb_scalar_operand(), 1..6))
            .prop_map(|(attr, vs)| json!({"attr": attr, "in": vs})),
        1 => (arb_filter_attr(), any::<bool>())
            .prop_map(|(attr, b)| json!({"attr": attr, "exists": b})),
    ]
    .boxed()
}

fn arb_filter() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({ "all": v })),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({ "any": v })),
            inner.prop_map(|v| json!({ "not": v })),
        ]
    })
}

#[derive(Debug, Clone)]
struct Case {
    users: Vec<Map<String, Value>>,
    filters: Vec<Value>,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(arb_user(), 0..=MAX_USERS),
        prop::collection::vec(arb_filter(), FILTERS_PER_CASE),
    )
        .prop_map(|(users, filters)| Case { users, filters })
}

fn user_id(index: usize) -> String {
    format!("u{index:03}")
}

/// Binds `params` in order and returns the selected ids.
macro_rules! select_ids {
    ($conn:expr, $sql:expr, $params:expr) => {{
        let mut query = sqlx::query_scalar::<_, String>($sql);
        for param in $params {
            query = match param {
                SqlParam::Text(s) => query.bind(s.clone()),
                SqlParam::Int(i) => query.bind(*i),
                SqlParam::Float(f) => query.bind(*f),
            };
        }
        query
            .fetch_all($conn)
            .await
            .map(|ids| ids.into_iter().collect::<BTreeSet<String>>())
    }};
}

/// Inserts `users` as `(id, attributes)` rows with a single statement.
macro_rules! insert_users {
    ($conn:expr, $table:expr, $users:expr) => {{
        let users: &[Map<String, Value>] = $users;
        if users.is_empty() {
            Ok(())
        } else {
            let rows = vec!["(?, ?)"; users.len()].join(", ");
            let sql = format!("INSERT INTO {} (id, attributes) VALUES {rows}", $table);
            let mut query = sqlx::query(&sql);
            for (i, user) in users.iter().enumerate() {
                query = query
                    .bind(user_id(i))
                    .bind(Value::Object(user.clone()).to_string());
            }
            query.execute($conn).await.map(|_| ())
        }
    }};
}

/// Running totals, reported at the end of a run.
#[derive(Debug, Default)]
struct Stats {
    cases: AtomicUsize,
    filters: AtomicUsize,
    users: AtomicUsize,
    matched: AtomicUsize,
}

impl Stats {
    fn report(&self, backend: &str) {
        let filters = self.filters.load(Ordering::Relaxed);
        let users = self.users.load(Ordering::Relaxed);
        let matched = self.matched.load(Ordering::Relaxed);
        eprintln!(
            "{backend}: {} cases, {filters} filters checked against {users} users, \
             {matched} user/filter matches",
            self.cases.load(Ordering::Relaxed)
        );
        assert!(
            filters > 0 && matched > 0,
            "the generators never produced a match"
        );
    }
}

fn case_error(db: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("database error: {db}"))
}

/// Compares the ids selected in SQL with the in-memory evaluation.
fn check_agreement(
    case: &Case,
    filter_json: &Value,
    fragment: &SqlFragment,
    selected: &BTreeSet<String>,
    stats: &Stats,
) -> Result<(), TestCaseError> {
    let filter = Filter::parse(filter_json).map_err(|e| TestCaseError::fail(e.message))?;
    let expected: BTreeSet<String> = case
        .users
        .iter()
        .enumerate()
        .filter(|(_, user)| filter.matches(user, now()))
        .map(|(i, _)| user_id(i))
        .collect();
    stats.filters.fetch_add(1, Ordering::Relaxed);
    stats.users.fetch_add(case.users.len(), Ordering::Relaxed);
    stats.matched.fetch_add(expected.len(), Ordering::Relaxed);
    if &expected == selected {
        return Ok(());
    }
    let describe = |ids: Vec<&String>| -> String {
        ids.into_iter()
            .map(|id| {
                let index: usize = id[1..].parse().unwrap_or(usize::MAX);
                let user = case.users.get(index).map(|u| Value::Object(u.clone()));
                format!("\n    {id}: {}", user.unwrap_or(Value::Null))
            })
            .collect()
    };
    Err(TestCaseError::fail(format!(
        "SQL and matches() disagree\n  filter: {filter_json}\n  sql: {}\n  params: {:?}\
         \n  only selected by SQL:{}\n  only matched in memory:{}",
        fragment.sql,
        fragment.params,
        describe(selected.difference(&expected).collect()),
        describe(expected.difference(selected).collect()),
    )))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run_property<F, Fut>(rt: &tokio::runtime::Runtime, backend: &str, check_case: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&arb_case(), |case| rt.block_on(check_case(case)));
    if let Err(failure) = result {
        panic!("{backend}: {failure}");
    }
}

async fn sqlite_connection() -> SqliteConnection {
    let options = SqliteConnectOptions::from_str("sqlite::memory:").expect("sqlite options");
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("open in-memory SQLite");
    conn.execute("CREATE TABLE users(id TEXT PRIMARY KEY, attributes TEXT NOT NULL)")
        .await
        .expect("create users table");
    // Every attribute indexed on its typed value of every type, as segments get them: the
    // selective form of each filter reads those indexes and must select the same users.
    for key in KEYS.iter().chain(["ghost"].iter()) {
        for kind in [AttrType::Text, AttrType::Number, AttrType::Bool] {
            let sql = format!(
                "CREATE INDEX users_attr_{}_{key} ON users ({})",
                kind.as_str(),
                sqlite_typed_value("attributes", key, kind)
            );
            conn.execute(sql.as_str())
                .await
                .expect("create attribute index");
        }
    }
    conn
}

async fn sqlite_check_case(
    conn: &Mutex<SqliteConnection>,
    case: &Case,
    stats: &Stats,
) -> Result<(), TestCaseError> {
    let mut conn = conn.lock().await;
    sqlx::query("DELETE FROM users")
        .execute(&mut *conn)
        .await
        .map_err(case_error)?;
    insert_users!(&mut *conn, "users", &case.users).map_err(case_error)?;
    for filter_json in &case.filters {
        let filter = Filter::parse(filter_json).map_err(|e| TestCaseError::fail(e.message))?;
        for fragment in [
            filter.to_sql(SqlDialect::Sqlite, "attributes", now()),
            filter.to_sql_selective(SqlDialect::Sqlite, "attributes", now()),
        ] {
            let sql = format!("SELECT id FROM users WHERE {}", fragment.sql);
            let selected = select_ids!(&mut *conn, &sql, &fragment.params).map_err(|e| {
                TestCaseError::fail(format!("{e}\n  sql: {sql}\n  filter: {filter_json}"))
            })?;
            check_agreement(case, filter_json, &fragment, &selected, stats)?;
        }
    }
    stats.cases.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn mysql_check_case(
    conn: &Mutex<MySqlConnection>,
    table: &str,
    case: &Case,
    stats: &Stats,
) -> Result<(), TestCaseError> {
    let mut conn = conn.lock().await;
    sqlx::query(&format!("DELETE FROM {table}"))
        .execute(&mut *conn)
        .await
        .map_err(case_error)?;
    insert_users!(&mut *conn, table, &case.users).map_err(case_error)?;
    for filter_json in &case.filters {
        let filter = Filter::parse(filter_json).map_err(|e| TestCaseError::fail(e.message))?;
        let fragment = filter.to_sql(SqlDialect::Mysql, "attributes", now());
        let sql = format!("SELECT id FROM {table} WHERE {}", fragment.sql);
        let selected = select_ids!(&mut *conn, &sql, &fragment.params).map_err(|e| {
            TestCaseError::fail(format!("{e}\n  sql: {sql}\n  filter: {filter_json}"))
        })?;
        check_agreement(case, filter_json, &fragment, &selected, stats)?;
    }
    stats.cases.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Hand-picked users and filters covering each rule once, run before the
/// random cases so that a regression shows up as a readable failure.
fn edge_case() -> Case {
    let users = [
        json!({}),
        json!({"tier": "premium", "score": 10, "active": true, "last_active_at": time_string(-30 * 86_400)}),
        json!({"tier": "Premium", "score": 10.0, "active": false, "last_active_at": time_string(-30 * 86_400 - 1)}),
        json!({"tier": "premium ", "score": "10", "active": 1, "locale": null}),
        json!({"tier": null, "score": 9.5, "active": "true", "locale": "en"}),
        json!({"tier": ["premium"], "score": i64::MAX, "locale": "EN", "age": u64::MAX}),
        json!({"tier": {"x": 1}, "score": -0.0, "locale": "é", "age": 9_007_199_254_740_993i64}),
    ];
    let filters = [
        json!({"attr": "tier", "eq": "premium"}),
        json!({"attr": "tier", "ne": "premium"}),
        json!({"attr": "tier", "lt": "premium"}),
        json!({"attr": "tier", "gt": "premium"}),
        json!({"attr": "score", "eq": 10}),
        json!({"attr": "score", "gte": 10}),
        json!({"attr": "score", "lt": "9"}),
        json!({"attr": "score", "eq": 0}),
        json!({"attr": "score", "eq": 9.223_372_036_854_776e18}),
        json!({"attr": "age", "eq": 9_007_199_254_740_992i64}),
        json!({"attr": "age", "gt": 1e19}),
        json!({"attr": "active", "eq": true}),
        json!({"attr": "active", "ne": false}),
        json!({"attr": "active", "in": [true, "true", 1]}),
        json!({"attr": "locale", "in": ["en", "é"]}),
        json!({"attr": "locale", "exists": true}),
        json!({"attr": "locale", "exists": false}),
        json!({"attr": "tier", "exists": true}),
        json!({"attr": "last_active_at", "gte": "now-30d"}),
        json!({"attr": "last_active_at", "lt": "now-30d"}),
        json!({"not": {"attr": "ghost", "lt": 1}}),
        json!({"all": []}),
        json!({"any": []}),
        json!({"not": {"any": [{"attr": "score", "lte": 10}, {"attr": "tier", "exists": false}]}}),
    ];
    let users = users
        .into_iter()
        .map(|u| match u {
            Value::Object(map) => map,
            _ => Map::new(),
        })
        .collect();
    Case {
        users,
        filters: filters.to_vec(),
    }
}

#[test]
fn sqlite_sql_and_in_memory_evaluation_agree_on_random_users_and_filters() {
    let rt = runtime();
    let conn = Mutex::new(rt.block_on(sqlite_connection()));
    let stats = Stats::default();
    if let Err(e) = rt.block_on(sqlite_check_case(&conn, &edge_case(), &Stats::default())) {
        panic!("sqlite edge cases: {e}");
    }
    run_property(&rt, "sqlite", |case| {
        let (conn, stats) = (&conn, &stats);
        async move { sqlite_check_case(conn, &case, stats).await }
    });
    stats.report("sqlite");
}

#[test]
fn mysql_sql_and_in_memory_evaluation_agree_on_random_users_and_filters() {
    let Ok(url) = std::env::var("HERALD_TEST_MYSQL_URL") else {
        eprintln!("HERALD_TEST_MYSQL_URL is not set; skipping the MySQL agreement test");
        return;
    };
    let rt = runtime();
    let table = format!("filter_prop_{}", uuid::Uuid::new_v4().simple());
    let conn = rt.block_on(async {
        let mut conn = MySqlConnection::connect(&url).await.expect("connect to MySQL");
        conn.execute(
            format!(
                "CREATE TABLE {table} (id VARCHAR(16) NOT NULL PRIMARY KEY, attributes LONGTEXT NOT NULL) \
                 DEFAULT CHARSET = utf8mb4"
            )
            .as_str(),
        )
        .await
        .expect("create the test table");
        conn
    });
    let conn = Mutex::new(conn);
    let stats = Stats::default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Err(e) = rt.block_on(mysql_check_case(
            &conn,
            &table,
            &edge_case(),
            &Stats::default(),
        )) {
            panic!("mysql edge cases: {e}");
        }
        run_property(&rt, "mysql", |case| {
            let (conn, table, stats) = (&conn, table.as_str(), &stats);
            async move { mysql_check_case(conn, table, &case, stats).await }
        });
    }));
    let dropped = rt.block_on(async {
        conn.lock()
            .await
            .execute(format!("DROP TABLE IF EXISTS {table}").as_str())
            .await
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("drop the test table");
    stats.report("mysql");
}
