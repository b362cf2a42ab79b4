//! Smoke suite of the ScyllaDB/Cassandra adapter against `kassandra` 0.14, the only CQL server
//! that runs here, served on a local port by this binary (the crate is an engine and a frame
//! codec; the accept loop is below).
//!
//! kassandra is right about the protocol, schemas and equality reads and writes, and wrong about
//! what the inbox depends on most: it ignores clustering order (rows come back ascending), key
//! ranges, `LIMIT ?` and TTLs, and cannot parse `UPDATE … USING`. So this suite checks only
//! what it can check honestly: the production session (settings, token-aware profile) connects,
//! the keyspace and the `migrations/cql/inbox` schema apply (twice: idempotent), and the
//! production point reads (`ROW`, `GET_MARK`) prepare, bind and decode into the adapter's types
//! against rows written by the production column list. Everything else (order, ranges, paging,
//! TTLs, the unread window) is the conformance suite's, against a real cluster
//! (`HERALD_TEST_SCYLLA_URL`, `tests/inbox.rs`).
//!
//! The per-user broadcast states use nothing kassandra gets wrong (blind inserts, one
//! partition read, the earliest mark chosen by the adapter), so their whole conformance cases
//! run here through the production adapter.

mod common;
#[path = "support/broadcast_state_cases.rs"]
mod state_cases;

use futures::{SinkExt, StreamExt};
use herald_storage::scylla::{inbox_cql, ScyllaInbox};
use herald_storage::BackendUrl;
use kassandra::cql::query::{QueryString, QueryValue};
use kassandra::error::DbError;
use kassandra::frame::request::Request;
use kassandra::frame::response::error::Error as KError;
use kassandra::frame::response::result::QueryResult;
use kassandra::frame::response::Response;
use kassandra::frame::{request_stream, response_sink};
use kassandra::KassandraSession;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// Serves one in-memory kassandra engine on a local port.
async fn start_kassandra() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let db = Arc::new(Mutex::new(Server {
        session: KassandraSession::new(),
        keyspace: None,
        prepared: Vec::new(),
    }));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(connection(db.clone(), socket));
        }
    });
    addr
}

/// One kassandra engine, with what this server remembers to reload it (see
/// [`alter_table_add`]).
struct Server {
    session: KassandraSession,
    /// The keyspace the driver last chose with `USE`.
    keyspace: Option<String>,
    /// Every statement prepared, with its id and the keyspace it was prepared in.
    prepared: Vec<(QueryString, u128, Option<String>)>,
}

async fn connection(db: Arc<Mutex<Server>>, mut socket: TcpStream) {
    let (mut r, mut w) = socket.split();
    let mut requests = request_stream(&mut r);
    let mut responses = response_sink(&mut w);
    while let Some(Ok((frame, opcode, data))) = requests.next().await {
        let response = match alter_table_add(&db, opcode, &data) {
            Some(response) => response,
            None => match Request::deserialize(opcode, &data, frame.flags) {
                Ok(request) => handle(&db, request),
                Err(e) => Response::Error(e),
            },
        };
        if responses.send((response, frame.stream)).await.is_err() {
            break;
        }
    }
}

/// `ALTER TABLE <table> ADD <column> <type>`, which kassandra 0.14 cannot parse, done here on
/// its saved state: the column is appended to the table's schema (the migrations add columns
/// to tables they created moments before, so there are no rows to rewrite). `None` for any
/// other request.
fn alter_table_add(
    db: &Mutex<Server>,
    opcode: kassandra::frame::request::RequestOpcode,
    data: &[u8],
) -> Option<Response> {
    if opcode != kassandra::frame::request::RequestOpcode::Query || data.len() < 4 {
        return None;
    }
    let len = i32::from_be_bytes(data[..4].try_into().ok()?) as usize;
    let text = std::str::from_utf8(data.get(4..4 + len)?).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let ["ALTER", "TABLE", table, "ADD", column, ty] = words.as_slice() else {
        return None;
    };
    let ty = match ty.to_ascii_lowercase().as_str() {
        "bigint" => "BigInt",
        "text" => "Text",
        "uuid" => "Uuid",
        other => panic!("the smoke server adds no {other} columns"),
    };
    let mut server = db.lock().unwrap_or_else(|e| e.into_inner());
    let state = String::from_utf8(server.session.save_state()).expect("kassandra saves UTF-8");
    // The table's schema: `name: "<table>"`, then its `columns: { … }` map, appended to.
    let at = state
        .find(&format!("name: \"{table}\""))
        .unwrap_or_else(|| panic!("no table {table}"));
    let open = at + state[at..].find("columns: {").expect("a columns map") + "columns: {".len();
    let mut depth = 1;
    let mut close = open;
    for (i, c) in state[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            close = open + i;
            break;
        }
    }
    if state[open..close].contains(&format!("\"{column}\"")) {
        return Some(Response::Error(KError::new(
            DbError::Invalid,
            format!("Invalid column name {column} because it conflicts with an existing column"),
        )));
    }
    let edited = format!(
        "{}\"{column}\": (ty: {ty}, kind: Regular),\n{}",
        &state[..close],
        &state[close..]
    );
    let mut k = KassandraSession::load_state(edited.as_bytes()).expect("the edited state loads");
    // A reloaded session forgets its prepared statements and its keyspace: the statements are
    // prepared again under the ids the driver holds (a new id would fail its re-prepare).
    for (query, id, keyspace) in &server.prepared {
        if let Some(ks) = keyspace {
            k.use_keyspace(ks.clone());
        }
        let _ = k.prepare_with_id(query.clone(), *id);
    }
    if let Some(ks) = server.keyspace.clone() {
        k.use_keyspace(ks);
    }
    server.session = k;
    Some(Response::Result(QueryResult::Void))
}

fn handle(db: &Mutex<Server>, request: Request<'_>) -> Response {
    // The engine panics on what it does not implement; the lock stays usable after that.
    let mut server = db.lock().unwrap_or_else(|e| e.into_inner());
    let server = &mut *server;
    let k = &mut server.session;
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::Query(q) => {
            if let QueryString::Use { keyspace } = &q.query {
                server.keyspace = Some(keyspace.clone());
            }
            k.process(q)
        }
        Request::Execute(e) => k.execute(e),
        Request::Batch(b) => k.process_batch(b),
        Request::Prepare(q) => {
            let mask = bind_mask(&q);
            let result = k.prepare(q.clone());
            if let Ok(QueryResult::Prepared(p)) = &result {
                server.prepared.push((q, p.id, server.keyspace.clone()));
            }
            result.map(|r| only_bind_markers(r, &mask))
        }
        Request::AuthResponse => Err(KError::new(DbError::ProtocolError, "no authentication")),
    };
    result.map_or_else(Response::Error, Response::Result)
}

/// Which of a statement's values are bind markers. kassandra 0.14 describes every value of a
/// prepared WHERE clause as a bind marker, literals too, so the driver's own metadata queries
/// (`SELECT … FROM system.local WHERE key = 'local'`) would expect a value it never sends.
fn bind_mask(q: &QueryString) -> Vec<bool> {
    let marker = |v: &QueryValue| matches!(v, QueryValue::Blankslate);
    match q {
        QueryString::Select(s) => s
            .r#where
            .statements
            .iter()
            .map(|(_, v)| marker(v))
            .collect(),
        QueryString::Delete(d) => d
            .r#where
            .statements
            .iter()
            .map(|(_, v)| marker(v))
            .collect(),
        QueryString::Insert(i) => i.values.iter().map(marker).collect(),
        _ => Vec::new(),
    }
}

fn only_bind_markers(mut r: QueryResult, mask: &[bool]) -> QueryResult {
    if let QueryResult::Prepared(p) = &mut r {
        let md = &mut p.prepared_metadata;
        if md.col_specs.len() == mask.len() {
            let mut i = 0;
            md.col_specs.retain(|_| {
                i += 1;
                mask[i - 1]
            });
            for pk in &mut md.pk_indexes {
                pk.index = mask[..pk.index as usize].iter().filter(|m| **m).count() as u16;
            }
        }
    }
    r
}

/// The production INSERT without its `USING TTL ?`, which kassandra cannot bind (the TTL is
/// checked against a real cluster by the conformance suite).
fn insert_without_ttl() -> String {
    let s = inbox_cql::INSERT
        .strip_suffix(" USING TTL ?")
        .expect("the production INSERT ends with its TTL");
    s.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_session_connects_applies_the_schema_and_reads_rows_by_key() {
    let addr = start_kassandra().await;
    let url = BackendUrl::parse(&format!(
        "scylla://{addr}/herald_smoke?consistency=one&replication_class=SimpleStrategy&replication_factor=1"
    ))
    .unwrap();
    let session = ScyllaInbox::schema_session(&url)
        .await
        .expect("connect, create the keyspace, apply the schema");
    // Opening again finds the schema recorded and applies nothing twice.
    let again = ScyllaInbox::schema_session(&url)
        .await
        .expect("a second open of the same keyspace");
    let applied = again
        .query_unpaged(
            "SELECT version FROM herald_migrations WHERE port = 'inbox'",
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let versions: Vec<(String,)> = applied.rows().unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(
        versions,
        [("0001_init".to_owned(),), ("0002_states".to_owned(),)]
    );

    // Rows written by the production column list, read back by the production point read.
    let insert = session.prepare(insert_without_ttl()).await.unwrap();
    let row = session.prepare(inbox_cql::ROW).await.unwrap();
    let user = format!("{}-u", common::run_id());
    let (id, created_at) = (Uuid::new_v4(), 1_780_000_000_123_456_i64);
    session
        .execute_unpaged(
            &insert,
            (
                &user,
                created_at,
                id,
                Some("c-1"),
                "Title",
                "Body",
                None::<String>,
                r#"{"k":1}"#,
            ),
        )
        .await
        .unwrap();
    type State = (
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let got: Vec<State> = session
        .execute_unpaged(&row, (&user, created_at, id))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows()
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, [(Some("Title".to_owned()), None, None, None, None)]);
    // Another user's key, or another id, finds nothing.
    for (u, i) in [(format!("{user}x"), id), (user.clone(), Uuid::new_v4())] {
        let none = session
            .execute_unpaged(&row, (&u, created_at, i))
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .rows_num();
        assert_eq!(none, 0, "{u} {i}");
    }
    // The whole row by its key (what the push gateway reads before an unless-read push).
    let get = session.prepare(inbox_cql::GET).await.unwrap();
    let rows = session
        .execute_unpaged(&get, (&user, created_at, id))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    type Full = (
        Uuid,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let full: Vec<Full> = rows.rows().unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(full.len(), 1);
    assert_eq!(
        (full[0].0, full[0].2.as_deref(), full[0].6),
        (id, Some("Title"), created_at)
    );

    // The read watermark: absent, then read back by the production statement.
    let get_mark = session.prepare(inbox_cql::GET_MARK).await.unwrap();
    let mark = |u: String| {
        let (session, get_mark) = (session.clone(), get_mark.clone());
        async move {
            let rows = session
                .execute_unpaged(&get_mark, (u,))
                .await
                .unwrap()
                .into_rows_result()
                .unwrap();
            let marks: Vec<(Option<i64>, Option<i64>)> =
                rows.rows().unwrap().map(|r| r.unwrap()).collect();
            marks.first().map(|(r, s)| (*r, *s))
        }
    };
    assert_eq!(mark(user.clone()).await, None);
    let set = session
        .prepare(
            "INSERT INTO inbox_read_marks (user_id, read_through, seen_through) VALUES (?, ?, ?)",
        )
        .await
        .unwrap();
    session
        .execute_unpaged(&set, (&user, created_at, created_at + 1))
        .await
        .unwrap();
    assert_eq!(
        mark(user.clone()).await,
        Some((Some(created_at), Some(created_at + 1)))
    );
    // The state cells the second schema file added read back by the production statements.
    let states = session
        .prepare(
            "INSERT INTO notifications_by_user (user_id, created_at, id, title, seen_at, \
             archived_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .await
        .unwrap();
    let id2 = Uuid::new_v4();
    session
        .execute_unpaged(&states, (&user, created_at, id2, "T2", 7_i64, 9_i64))
        .await
        .unwrap();
    let got: Vec<State> = session
        .execute_unpaged(&row, (&user, created_at, id2))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows()
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, [(Some("T2".to_owned()), None, None, Some(7), Some(9))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cql_server_that_is_not_there_is_a_clear_unavailable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = BackendUrl::parse(&format!(
        "scylla://127.0.0.1:{port}/herald_smoke?connect_timeout_ms=500"
    ))
    .unwrap();
    let err = match herald_storage::open_inbox(&url, common::RETENTION).await {
        Ok(_) => panic!("opened an inbox on a closed port"),
        Err(e) => e,
    };
    assert_eq!(err.kind, herald_core::ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("ScyllaDB"), "{err}");
}

/// The `BroadcastStates` conformance cases, through the production adapter (schema, prepared
/// statements, paged partition read) against kassandra.
mod broadcast_states {
    use super::*;
    use herald_core::ports::BroadcastStates;

    async fn open() -> Arc<dyn BroadcastStates> {
        let addr = start_kassandra().await;
        let url = BackendUrl::parse(&format!(
            "scylla://{addr}/herald_smoke?consistency=one&replication_class=SimpleStrategy&replication_factor=1"
        ))
        .unwrap();
        herald_storage::open_broadcast_states(&url)
            .await
            .expect("open the broadcast states on kassandra")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_user_state_is_sparse_and_keeps_first_times() {
        state_cases::per_user_state_is_sparse_and_keeps_first_times(open().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_earliest_time_is_kept_whatever_order_the_marks_arrive_in() {
        state_cases::the_earliest_time_is_kept_whatever_order_the_marks_arrive_in(open().await)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_state_of_a_user_with_many_comes_back() {
        state_cases::every_state_of_a_user_with_many_comes_back(open().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seen_and_archived_are_kept_beside_read_and_dismissed() {
        state_cases::seen_and_archived_are_kept_beside_read_and_dismissed(open().await).await;
    }
}
