//! The inbox role through HTTP, against a real server on port 0 with embedded backends in a
//! temp dir (`spawn_app`). Personal rows and broadcasts are written straight into the stores,
//! as the fan-out role would; time moves only through the `ManualClock` in the context.
//!
//! The open broadcasts are cached by the server and loaded on the first inbox read, so each
//! test stores its broadcasts before that read; a broadcast added later is announced with
//! `LiveEvent::BroadcastActivated`, as the fan-out role does.

mod common;
use common::*;

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use herald_core::filter::Filter;
use herald_core::ids::{broadcast_id, notification_id, row_time};
use herald_core::model::*;
use herald_core::Clock;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn spawn_app() -> TestApp {
    spawn_app_with(herald_inbox::LiveConfig::default()).await
}

/// A token for `user`, valid for a day from the app's current time.
fn token(app: &TestApp, user: &str) -> String {
    let now = app.clock.now();
    herald_core::token::mint(TOKEN_SECRET.as_bytes(), user, now, now + Duration::days(1))
}

impl TestApp {
    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    async fn call(&self, user: &str, method: Method, path: &str) -> (StatusCode, Value) {
        let req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token(self, user));
        self.send(req).await
    }

    async fn get(&self, user: &str, path: &str) -> Value {
        let (status, body) = self.call(user, Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, user: &str, path: &str) -> (StatusCode, Value) {
        self.call(user, Method::POST, path).await
    }

    async fn bulk(&self, user: &str, body: Value) -> (StatusCode, Value) {
        let req = self
            .client
            .post(format!("{}/v1/inbox/bulk", self.base))
            .bearer_auth(token(self, user))
            .json(&body);
        self.send(req).await
    }

    /// `(unread_count, unseen_count)` as `GET /v1/inbox/unread_count` gives them.
    async fn counts(&self, user: &str) -> (u64, u64) {
        let body = self.get(user, "/v1/inbox/unread_count").await;
        (
            body["unread_count"].as_u64().expect("unread_count"),
            body["unseen_count"].as_u64().expect("unseen_count"),
        )
    }

    async fn inbox(&self, user: &str, query: &str) -> Value {
        self.get(user, &format!("/v1/inbox{query}")).await
    }

    async fn unread(&self, user: &str) -> u64 {
        let body = self.get(user, "/v1/inbox/unread_count").await;
        body["unread_count"].as_u64().expect("unread_count")
    }

    /// Writes a personal row as a batch worker would (id derived from campaign and user).
    async fn personal(&self, user: &str, title: &str, created_at: DateTime<Utc>) -> Uuid {
        let campaign = format!("c-{title}");
        let created_at = row_time(created_at);
        let id = notification_id(&campaign, user, created_at);
        self.ctx
            .ports
            .inbox
            .write_batch(&[Notification {
                id,
                user_id: user.into(),
                campaign_id: Some(campaign),
                title: title.into(),
                body: format!("body of {title}"),
                category: Some("news".into()),
                data: json!({"title": title}),
                created_at,
                read_at: None,
                seen_at: None,
                archived_at: None,
            }])
            .await
            .expect("write personal row");
        id
    }

    /// Stores a broadcast as the dispatcher would (id derived from the campaign).
    async fn broadcast_with(
        &self,
        title: &str,
        starts_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        filter: Value,
        status: BroadcastStatus,
    ) -> Broadcast {
        let campaign = format!("bc-{title}");
        let filter = Filter::parse(&filter).expect("filter");
        let b = Broadcast {
            id: broadcast_id(&campaign),
            campaign_id: Some(campaign),
            title: title.into(),
            body: format!("body of {title}"),
            category: Some("announcements".into()),
            data: json!({"title": title}),
            segment: (!filter.is_match_all()).then(|| "some-segment".to_owned()),
            filter,
            channels: vec![Channel::InApp],
            priority: Priority::Normal,
            starts_at,
            expires_at,
            status,
            created_at: starts_at,
        };
        self.ctx
            .ports
            .broadcasts
            .insert(&b)
            .await
            .expect("insert broadcast");
        b
    }

    async fn broadcast(&self, title: &str, starts_at: DateTime<Utc>) -> Uuid {
        self.broadcast_with(
            title,
            starts_at,
            None,
            json!({"all": []}),
            BroadcastStatus::Active,
        )
        .await
        .id
    }
}

fn titles(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["title"].as_str().expect("title").to_owned())
        .collect()
}

fn item<'a>(page: &'a Value, title: &str) -> &'a Value {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["title"] == title)
        .unwrap_or_else(|| panic!("no item {title} in {page}"))
}

async fn next_event(events: &mut futures::stream::BoxStream<'static, LiveEvent>) -> LiveEvent {
    tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream goes on")
}

fn error_message(body: &Value, code: &str) -> String {
    assert_eq!(body["error"]["code"], code, "{body}");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(!msg.is_empty());
    msg.to_owned()
}

// ---------------------------------------------------------------------------------------------
// Merge and paging

#[tokio::test]
async fn personal_rows_and_broadcasts_are_interleaved_newest_first() {
    let app = spawn_app().await;
    let p1 = app.personal("u1", "p-50", ago(50)).await;
    app.broadcast("b-40", ago(40)).await;
    app.personal("u1", "p-30", ago(30)).await;
    app.personal("u1", "p-20", ago(20)).await;
    let b10 = app.broadcast("b-10", ago(10)).await;
    app.personal("u1", "p-5", ago(5)).await;
    // Someone else's row stays in their inbox.
    app.personal("u2", "other", ago(1)).await;

    let page = app.inbox("u1", "").await;
    assert_eq!(
        titles(&page),
        ["p-5", "b-10", "p-20", "p-30", "b-40", "p-50"]
    );
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["unread_count"], 6);

    let b = item(&page, "b-10");
    assert_eq!(b["id"], b10.to_string());
    assert_eq!(b["kind"], "broadcast");
    assert_eq!(b["body"], "body of b-10");
    assert_eq!(b["category"], "announcements");
    assert_eq!(b["data"], json!({"title": "b-10"}));
    assert_eq!(b["read"], false);
    assert_eq!(at(b["created_at"].as_str().unwrap()), ago(10));
    let p = item(&page, "p-50");
    assert_eq!(p["id"], p1.to_string());
    assert_eq!(p["kind"], "personal");
    assert_eq!(p["category"], "news");
    assert_eq!(at(p["created_at"].as_str().unwrap()), ago(50));
    // Every item carries its own cursor, and the cursors are distinct.
    let cursors: HashSet<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["cursor"].as_str().expect("cursor"))
        .collect();
    assert_eq!(cursors.len(), 6);

    // The cursor of an item pages on after it.
    let after_b10 = app
        .inbox("u1", &format!("?cursor={}", b["cursor"].as_str().unwrap()))
        .await;
    assert_eq!(titles(&after_b10), ["p-20", "p-30", "b-40", "p-50"]);

    // A user with nothing personal still sees the broadcasts.
    let other = app.inbox("u3", "").await;
    assert_eq!(titles(&other), ["b-10", "b-40"]);
    assert_eq!(other["unread_count"], 2);
}

#[tokio::test]
async fn paging_across_mixed_kinds_neither_skips_nor_repeats_while_new_items_arrive() {
    let app = spawn_app().await;
    let mut expected = Vec::new();
    // 30 personal rows and 10 broadcasts, two hours to one hour ago, interleaved.
    for i in 0..40i64 {
        let title = format!("old-{i:02}");
        let when = ago(120) + Duration::seconds(90 * i);
        if i % 4 == 1 {
            app.broadcast(&title, when).await;
        } else {
            app.personal("u1", &title, when).await;
        }
        expected.push(title);
    }
    expected.reverse();

    let first = app.inbox("u1", "?limit=7").await;
    let mut seen = titles(&first);
    assert_eq!(seen.len(), 7);
    let mut cursor = first["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();

    // From now on a writer keeps adding newer personal rows while the reader pages on.
    let writer_ctx = app.ctx.clone();
    let stop = CancellationToken::new();
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut n = 0i64;
        while !writer_stop.is_cancelled() && n < 30 {
            writer_ctx
                .ports
                .inbox
                .write_batch(&[Notification {
                    id: notification_id(
                        &format!("new-{n}"),
                        "u1",
                        row_time(ago(30) + Duration::milliseconds(n)),
                    ),
                    user_id: "u1".into(),
                    campaign_id: None,
                    title: format!("new-{n}"),
                    body: String::new(),
                    category: None,
                    data: Value::Null,
                    created_at: row_time(ago(30) + Duration::milliseconds(n)),
                    read_at: None,
                    seen_at: None,
                    archived_at: None,
                }])
                .await
                .unwrap();
            n += 1;
            tokio::task::yield_now().await;
        }
        n
    });
    let mut new_broadcasts = 0;
    let mut pages = 1;
    loop {
        // Between page reads: a new personal row and, every other page, a new broadcast.
        app.personal(
            "u1",
            &format!("between-{pages}"),
            ago(20) + Duration::seconds(pages),
        )
        .await;
        if pages % 2 == 0 {
            let b = app
                .broadcast_with(
                    &format!("new-b-{pages}"),
                    ago(10) + Duration::seconds(pages),
                    None,
                    json!({"all": []}),
                    BroadcastStatus::Active,
                )
                .await;
            app.ctx
                .ports
                .live
                .publish(LiveEvent::BroadcastActivated {
                    broadcast: Box::new(b),
                })
                .await
                .unwrap();
            new_broadcasts += 1;
        }
        let page = app.inbox("u1", &format!("?limit=7&cursor={cursor}")).await;
        pages += 1;
        seen.extend(titles(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
        assert!(pages < 20, "paging does not end");
    }
    stop.cancel();
    let written = writer.await.unwrap();
    assert!(written > 0);
    assert!(new_broadcasts > 0);

    // Exactly the items that were there when paging began, each once, newest first.
    assert_eq!(seen, expected);

    // A fresh read starts from the newest items, the new ones included.
    let fresh = app.inbox("u1", "?limit=100").await;
    let fresh_titles = titles(&fresh);
    assert!(fresh_titles.contains(&"between-1".to_owned()));
    assert_eq!(fresh_titles.last().unwrap(), "old-00");
}

#[tokio::test]
async fn unread_only_filters_both_kinds() {
    let app = spawn_app().await;
    let p_read = app.personal("u1", "p-read", ago(50)).await;
    app.personal("u1", "p-unread", ago(40)).await;
    let b_read = app.broadcast("b-read", ago(30)).await;
    app.broadcast("b-unread", ago(20)).await;
    app.personal("u1", "p-unread-2", ago(10)).await;

    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{p_read}/read")).await.0,
        204
    );
    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{b_read}/read")).await.0,
        204
    );

    let all = app.inbox("u1", "?unread_only=false").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert_eq!(item(&all, "p-read")["read"], true);
    assert_eq!(item(&all, "b-read")["read"], true);
    assert_eq!(item(&all, "b-unread")["read"], false);

    let unread = app.inbox("u1", "?unread_only=true").await;
    assert_eq!(titles(&unread), ["p-unread-2", "b-unread", "p-unread"]);
    assert_eq!(unread["unread_count"], 3);

    // Paged one at a time, unread_only still walks both kinds.
    let mut seen = Vec::new();
    let mut query = "?unread_only=true&limit=1".to_owned();
    loop {
        let page = app.inbox("u1", &query).await;
        seen.extend(titles(&page));
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?unread_only=true&limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["p-unread-2", "b-unread", "p-unread"]);

    let (status, body) = app
        .call("u1", Method::GET, "/v1/inbox?unread_only=maybe")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    error_message(&body, "invalid");
}

// ---------------------------------------------------------------------------------------------
// Read state

#[tokio::test]
async fn read_and_dismiss_work_for_personal_items_and_broadcasts() {
    let app = spawn_app().await;
    let p1 = app.personal("u1", "p1", ago(40)).await;
    let p2 = app.personal("u1", "p2", ago(30)).await;
    let b1 = app.broadcast("b1", ago(20)).await;
    let b2 = app.broadcast("b2", ago(10)).await;
    assert_eq!(app.unread("u1").await, 4);

    for id in [p1, b1] {
        let (status, body) = app.post("u1", &format!("/v1/inbox/{id}/read")).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        // Reading again is fine and changes nothing.
        assert_eq!(app.post("u1", &format!("/v1/inbox/{id}/read")).await.0, 204);
    }
    let page = app.inbox("u1", "").await;
    assert_eq!(item(&page, "p1")["read"], true);
    assert_eq!(item(&page, "b1")["read"], true);
    assert_eq!(item(&page, "p2")["read"], false);
    assert_eq!(item(&page, "b2")["read"], false);
    assert_eq!(page["unread_count"], 2);
    assert_eq!(app.unread("u1").await, 2);

    for id in [p2, b2] {
        let (status, body) = app.post("u1", &format!("/v1/inbox/{id}/dismiss")).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let page = app.inbox("u1", "").await;
    assert_eq!(titles(&page), ["b1", "p1"]);
    assert_eq!(page["unread_count"], 0);
    assert_eq!(app.unread("u1").await, 0);

    // A dismissed item is gone: reading or dismissing it again is 404.
    for id in [p2, b2] {
        for action in ["read", "dismiss"] {
            let (status, body) = app.post("u1", &format!("/v1/inbox/{id}/{action}")).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{action} {id}: {body}");
            error_message(&body, "not_found");
        }
    }

    // Broadcast state is per user: another user still sees both broadcasts unread.
    let other = app.inbox("u2", "").await;
    assert_eq!(titles(&other), ["b2", "b1"]);
    assert_eq!(other["unread_count"], 2);
}

/// `backends.broadcast_states` set apart from the broadcasts: the inbox reads and writes the
/// per-user state there (as it would on ScyllaDB), and the broadcast store keeps none.
#[tokio::test]
async fn broadcast_states_configured_apart_are_kept_there_and_not_beside_the_broadcasts() {
    let states_dir = tempfile::tempdir().unwrap();
    let states_url = format!("sqlite://{}", states_dir.path().join("states.db").display());
    let url = states_url.clone();
    let app = spawn_app_configured(
        herald_inbox::LiveConfig::default(),
        |hub| hub,
        move |config| {
            config.backends.broadcast_states = Some(herald_core::config::Secret::new(url));
        },
    )
    .await;
    let b1 = app.broadcast("b1", ago(20)).await;
    let b2 = app.broadcast("b2", ago(10)).await;
    assert_eq!(app.unread("u1").await, 2);
    assert_eq!(app.post("u1", &format!("/v1/inbox/{b1}/read")).await.0, 204);
    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{b2}/dismiss")).await.0,
        204
    );
    let page = app.inbox("u1", "").await;
    assert_eq!(titles(&page), ["b1"]);
    assert_eq!(item(&page, "b1")["read"], true);
    assert_eq!(app.unread("u1").await, 0);

    let apart = herald_storage::open_broadcast_states(
        &herald_storage::BackendUrl::parse(&states_url).unwrap(),
    )
    .await
    .unwrap();
    let mut kept: Vec<(Uuid, bool, bool)> = apart
        .user_states("u1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.broadcast_id,
                s.read_at.is_some(),
                s.dismissed_at.is_some(),
            )
        })
        .collect();
    kept.sort();
    let mut want = vec![(b1, true, false), (b2, false, true)];
    want.sort();
    assert_eq!(kept, want);
    assert!(
        app.ctx
            .ports
            .broadcast_states
            .user_states("u2")
            .await
            .unwrap()
            .is_empty(),
        "another user has no state"
    );
    // The broadcast store's own engine (SQLite in the data dir, or the test MySQL) kept none.
    let beside = match &app.ctx.config.backends.broadcasts {
        Some(url) => herald_storage::BackendUrl::parse(url.expose()).unwrap(),
        None => herald_storage::BackendUrl::embedded(&app.ctx.config.data_dir, "broadcasts"),
    };
    let (_, beside) = herald_storage::open_broadcasts(&beside).await.unwrap();
    assert!(beside.user_states("u1").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_item_written_before_ids_carried_their_time_is_read_and_dismissed_by_its_id() {
    let app = spawn_app().await;
    // A row as wave 1 wrote it: a name-based v5 id and a time in microseconds.
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"an old campaign\0u1");
    app.ctx
        .ports
        .inbox
        .write_batch(&[Notification {
            id,
            user_id: "u1".into(),
            campaign_id: Some("old".into()),
            title: "old".into(),
            body: String::new(),
            category: None,
            data: Value::Null,
            created_at: ago(60) + Duration::microseconds(123),
            read_at: None,
            seen_at: None,
            archived_at: None,
        }])
        .await
        .unwrap();
    let fresh = app.personal("u1", "fresh", ago(1)).await;
    assert_eq!(app.unread("u1").await, 2);
    assert_eq!(app.post("u2", &format!("/v1/inbox/{id}/read")).await.0, 404);
    assert_eq!(app.post("u1", &format!("/v1/inbox/{id}/read")).await.0, 204);
    assert_eq!(app.unread("u1").await, 1);
    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{id}/dismiss")).await.0,
        204
    );
    assert_eq!(titles(&app.inbox("u1", "").await), ["fresh"]);
    assert_eq!(app.post("u1", &format!("/v1/inbox/{id}/read")).await.0, 404);
    // A time-carrying id of someone else's row (or of no row) is 404 too.
    assert_eq!(
        app.post("u2", &format!("/v1/inbox/{fresh}/dismiss"))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn read_all_covers_personal_rows_and_broadcasts() {
    let app = spawn_app().await;
    app.personal("u1", "p1", ago(40)).await;
    let p2 = app.personal("u1", "p2", ago(30)).await;
    let b1 = app.broadcast("b1", ago(20)).await;
    app.broadcast("b2", ago(10)).await;
    let b3 = app.broadcast("b3", ago(5)).await;
    assert_eq!(app.post("u1", &format!("/v1/inbox/{p2}/read")).await.0, 204);
    assert_eq!(app.post("u1", &format!("/v1/inbox/{b1}/read")).await.0, 204);
    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{b3}/dismiss")).await.0,
        204
    );
    assert_eq!(app.unread("u1").await, 2);

    let (status, body) = app.post("u1", "/v1/inbox/read_all").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["marked_read"], 2, "p1 and b2 were the unread ones");
    assert_eq!(app.unread("u1").await, 0);
    let page = app.inbox("u1", "").await;
    assert_eq!(
        titles(&page),
        ["b2", "b1", "p2", "p1"],
        "b3 stays dismissed"
    );
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["read"] == true));
    assert_eq!(
        app.inbox("u1", "?unread_only=true").await["items"],
        json!([])
    );

    // Nothing left: a second read_all changes nothing.
    assert_eq!(
        app.post("u1", "/v1/inbox/read_all").await.1["marked_read"],
        0
    );
    // Other users are untouched.
    assert_eq!(app.unread("u2").await, 3);
}

#[tokio::test]
async fn unread_count_covers_both_kinds_and_agrees_with_the_list() {
    let app = spawn_app().await;
    for i in 0..25 {
        app.personal("u1", &format!("p{i}"), ago(100 - i)).await;
    }
    app.broadcast("b1", ago(50)).await;
    app.broadcast("b2", ago(10)).await;
    assert_eq!(app.unread("u1").await, 27);
    assert_eq!(app.unread("nobody").await, 2, "the broadcasts only");
    // The list reports the count of the whole inbox, not of the page, on every page.
    let first = app.inbox("u1", "?limit=5").await;
    assert_eq!(first["unread_count"], 27);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app.inbox("u1", &format!("?limit=5&cursor={cursor}")).await;
    assert_eq!(second["unread_count"], 27);
    let everything = app.inbox("u1", "?limit=100").await;
    assert_eq!(everything["unread_count"], 27);
    assert_eq!(everything["items"].as_array().unwrap().len(), 27);

    let p = item(&everything, "p3")["id"].as_str().unwrap().to_owned();
    app.post("u1", &format!("/v1/inbox/{p}/read")).await;
    let b = item(&everything, "b2")["id"].as_str().unwrap().to_owned();
    app.post("u1", &format!("/v1/inbox/{b}/read")).await;
    assert_eq!(app.unread("u1").await, 25);
    assert_eq!(app.inbox("u1", "?limit=100").await["unread_count"], 25);
    assert_eq!(app.inbox("u1", "?limit=3").await["unread_count"], 25);
}

#[tokio::test]
async fn changes_are_published_on_the_live_hub() {
    let app = spawn_app().await;
    let p = app.personal("u1", "p", ago(20)).await;
    let b = app.broadcast("b", ago(10)).await;
    let subscription = app.ctx.ports.live.subscribe().await.unwrap();
    subscription.routes.follow("u1").await.unwrap();
    subscription.routes.follow("u2").await.unwrap();
    let mut events = subscription.events;

    assert_eq!(app.post("u1", &format!("/v1/inbox/{p}/read")).await.0, 204);
    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{b}/dismiss")).await.0,
        204
    );
    assert_eq!(app.post("u1", "/v1/inbox/read_all").await.0, 200);
    // A refused change publishes nothing.
    assert_eq!(app.post("u2", &format!("/v1/inbox/{p}/read")).await.0, 404);

    assert_eq!(
        next_event(&mut events).await,
        LiveEvent::Read {
            user_id: "u1".into(),
            id: p.to_string()
        }
    );
    assert_eq!(
        next_event(&mut events).await,
        LiveEvent::Dismiss {
            user_id: "u1".into(),
            id: b.to_string()
        }
    );
    assert_eq!(
        next_event(&mut events).await,
        LiveEvent::ReadAll {
            user_id: "u1".into()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Broadcast visibility

#[tokio::test]
async fn broadcasts_show_only_to_users_their_segment_matches() {
    let app = spawn_app().await;
    app.add_user("premium-user", json!({"tier": "premium", "locale": "fr"}))
        .await;
    app.add_user("free-user", json!({"tier": "free"})).await;
    let for_all = app.broadcast("everyone", ago(30)).await;
    let premium = app
        .broadcast_with(
            "premium-only",
            ago(20),
            None,
            json!({"attr": "tier", "eq": "premium"}),
            BroadcastStatus::Active,
        )
        .await
        .id;
    let no_tier = app
        .broadcast_with(
            "without-tier",
            ago(10),
            None,
            json!({"attr": "tier", "exists": false}),
            BroadcastStatus::Active,
        )
        .await
        .id;

    let page = app.inbox("premium-user", "").await;
    assert_eq!(titles(&page), ["premium-only", "everyone"]);
    assert_eq!(page["unread_count"], 2);
    assert_eq!(app.unread("premium-user").await, 2);

    let page = app.inbox("free-user", "").await;
    assert_eq!(titles(&page), ["everyone"]);
    assert_eq!(app.unread("free-user").await, 1);

    // A user the directory does not know has no attributes: match-all broadcasts, and filters
    // that hold for empty attributes, only.
    let page = app.inbox("stranger", "").await;
    assert_eq!(titles(&page), ["without-tier", "everyone"]);

    // A broadcast not meant for the user cannot be read or dismissed by them.
    for (user, id) in [("free-user", premium), ("premium-user", no_tier)] {
        for action in ["read", "dismiss"] {
            let (status, body) = app.post(user, &format!("/v1/inbox/{id}/{action}")).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{user} {action}: {body}");
        }
    }
    // read_all marks only what the user sees.
    assert_eq!(
        app.post("free-user", "/v1/inbox/read_all").await.1["marked_read"],
        1
    );
    assert_eq!(app.unread("premium-user").await, 2);
    assert_eq!(
        app.post("stranger", &format!("/v1/inbox/{for_all}/read"))
            .await
            .0,
        204
    );
    assert_eq!(app.unread("stranger").await, 1);
}

#[tokio::test]
async fn broadcasts_are_invisible_before_they_start_and_after_they_expire() {
    let app = spawn_app().await;
    let start = at(NOW) + Duration::hours(1);
    let end = at(NOW) + Duration::hours(3);
    let b = app
        .broadcast_with(
            "scheduled",
            start,
            Some(end),
            json!({"all": []}),
            BroadcastStatus::Scheduled,
        )
        .await
        .id;
    let expired = app
        .broadcast_with(
            "expired",
            ago(120),
            Some(ago(60)),
            json!({"all": []}),
            BroadcastStatus::Active,
        )
        .await
        .id;
    app.broadcast_with(
        "cancelled",
        ago(30),
        None,
        json!({"all": []}),
        BroadcastStatus::Cancelled,
    )
    .await;
    app.personal("u1", "p", ago(10)).await;

    let page = app.inbox("u1", "").await;
    assert_eq!(titles(&page), ["p"]);
    assert_eq!(page["unread_count"], 1);
    for id in [b, expired] {
        assert_eq!(app.post("u1", &format!("/v1/inbox/{id}/read")).await.0, 404);
    }

    // At its start it shows, at its start time.
    app.clock.set(start);
    let page = app.inbox("u1", "").await;
    assert_eq!(titles(&page), ["scheduled", "p"]);
    assert_eq!(
        at(item(&page, "scheduled")["created_at"].as_str().unwrap()),
        start
    );
    assert_eq!(app.unread("u1").await, 2);
    assert_eq!(app.post("u1", &format!("/v1/inbox/{b}/read")).await.0, 204);

    // One microsecond before its end it still shows; at its end it is gone.
    app.clock.set(end - Duration::microseconds(1));
    assert_eq!(titles(&app.inbox("u1", "").await), ["scheduled", "p"]);
    app.clock.set(end);
    let page = app.inbox("u1", "").await;
    assert_eq!(titles(&page), ["p"]);
    assert_eq!(app.unread("u1").await, 1);
    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{b}/dismiss")).await.0,
        404
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication and isolation

#[tokio::test]
async fn bad_tokens_are_401_with_a_reason() {
    let app = spawn_app().await;
    app.personal("u1", "p", ago(10)).await;
    let url = format!("{}/v1/inbox", app.base);
    let now = app.clock.now();

    let (status, body) = app.send(app.client.get(&url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body, "unauthorized").contains("missing"));

    let (status, body) = app.send(app.client.get(&url).bearer_auth("abc.def")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body, "unauthorized").contains("malformed"));

    let (status, body) = app
        .send(
            app.client
                .get(&url)
                .header("authorization", "Basic dTE6cGFzcw=="),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body, "unauthorized").contains("Bearer"));

    let expired = herald_core::token::mint(
        TOKEN_SECRET.as_bytes(),
        "u1",
        now - Duration::hours(2),
        now - Duration::hours(1),
    );
    let (status, body) = app.send(app.client.get(&url).bearer_auth(&expired)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body, "unauthorized").contains("expired"));

    let forged = herald_core::token::mint(b"another-secret", "u1", now, now + Duration::hours(1));
    let resp = app
        .client
        .get(&url)
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (status, body) = (resp.status(), resp.json::<Value>().await.unwrap());
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body, "unauthorized").contains("signature"));

    // Every endpoint is behind the token.
    for (method, path) in [
        (Method::GET, "/v1/inbox/unread_count"),
        (Method::POST, "/v1/inbox/read_all"),
        (
            Method::POST,
            "/v1/inbox/00000000-0000-0000-0000-000000000000/read",
        ),
        (
            Method::POST,
            "/v1/inbox/00000000-0000-0000-0000-000000000000/dismiss",
        ),
    ] {
        let (status, body) = app
            .send(app.client.request(method, format!("{}{path}", app.base)))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        error_message(&body, "unauthorized");
    }

    // A token minted now expires when the clock passes its `exp`.
    let good = token(&app, "u1");
    let (status, _) = app.send(app.client.get(&url).bearer_auth(&good)).await;
    assert_eq!(status, StatusCode::OK);
    app.clock.advance(Duration::days(2));
    let (status, body) = app.send(app.client.get(&url).bearer_auth(&good)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_message(&body, "unauthorized").contains("expired"));
}

#[tokio::test]
async fn the_token_may_come_in_the_query() {
    let app = spawn_app().await;
    app.personal("u1", "p", ago(10)).await;
    let t = token(&app, "u1");
    let (status, body) = app
        .send(
            app.client
                .get(format!("{}/v1/inbox?limit=5&token={t}", app.base)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(titles(&body), ["p"]);
    let (status, body) = app
        .send(app.client.get(format!("{}/v1/inbox?token=nope", app.base)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    error_message(&body, "unauthorized");
}

#[tokio::test]
async fn another_users_items_are_404_not_403() {
    let app = spawn_app().await;
    let mine = app.personal("alice", "alice's", ago(10)).await;
    app.add_user("bob", json!({"tier": "free"})).await;
    let hers = app
        .broadcast_with(
            "premium-only",
            ago(5),
            None,
            json!({"attr": "tier", "eq": "premium"}),
            BroadcastStatus::Active,
        )
        .await
        .id;

    for action in ["read", "dismiss"] {
        let (status, body) = app.post("bob", &format!("/v1/inbox/{mine}/{action}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        error_message(&body, "not_found");
        let (status, _) = app.post("bob", &format!("/v1/inbox/{hers}/{action}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // Unknown ids and ids that are not UUIDs are 404 as well.
    for id in [Uuid::now_v7().to_string(), "not-a-uuid".to_owned()] {
        for action in ["read", "dismiss"] {
            let (status, body) = app.post("bob", &format!("/v1/inbox/{id}/{action}")).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
            error_message(&body, "not_found");
        }
    }
    // Alice's item is untouched and hers alone.
    let page = app.inbox("alice", "").await;
    assert_eq!(titles(&page), ["alice's"]);
    assert_eq!(item(&page, "alice's")["read"], false);
    assert_eq!(app.inbox("bob", "").await["items"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Input validation and the role

#[tokio::test]
async fn a_bad_limit_or_cursor_is_422() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.personal("u1", &format!("p{i}"), ago(10 + i)).await;
    }
    for query in [
        "?limit=0",
        "?limit=101",
        "?limit=-1",
        "?limit=abc",
        "?cursor=garbage",
        "?cursor=AAAA",
        "?cursor=%2F%2F%2F",
    ] {
        let (status, body) = app
            .call("u1", Method::GET, &format!("/v1/inbox{query}"))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        error_message(&body, "invalid");
    }
    let page = app.inbox("u1", "?limit=1").await;
    assert_eq!(titles(&page), ["p0"]);
    assert!(page["next_cursor"].is_string());
    assert_eq!(
        app.inbox("u1", "?limit=100").await["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // An empty cursor is the first page; the default page size is 20.
    assert_eq!(
        titles(&app.inbox("u1", "?cursor=").await),
        ["p0", "p1", "p2"]
    );
    for i in 3..25 {
        app.personal("u1", &format!("p{i}"), ago(10 + i)).await;
    }
    let page = app.inbox("u1", "").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert!(page["next_cursor"].is_string());
}

#[tokio::test]
async fn the_role_serves_the_operations_endpoints_and_error_bodies() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, body) = app.call("u1", Method::GET, "/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_message(&body, "not_found");
    let (status, body) = app.call("u1", Method::DELETE, "/v1/inbox").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    error_message(&body, "method_not_allowed");
}

#[tokio::test]
async fn an_activated_broadcast_shows_at_once_without_a_reload() {
    let app = spawn_app().await;
    // A service whose copy of the open broadcasts would not be reloaded within the test.
    let svc = herald_inbox::InboxService::with_broadcast_refresh(
        app.ctx.clone(),
        std::time::Duration::from_secs(3600),
    );
    // A hub that subscribes in the background (Redis) is followed a moment later.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !svc.follows_activations() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "activations followed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let req = herald_inbox::PageRequest {
        before: None,
        limit: 20,
        filter: herald_core::model::InboxFilter::default(),
    };
    assert!(svc.page("u1", req).await.unwrap().items.is_empty());

    // Stored without an event: the cached copy does not know it yet.
    let quiet = app
        .broadcast_with(
            "quiet",
            ago(20),
            None,
            json!({"all": []}),
            BroadcastStatus::Active,
        )
        .await;
    assert!(svc.page("u1", req).await.unwrap().items.is_empty());

    // Announced as the fan-out role does: it shows as soon as the event is seen, and the
    // reload it triggers brings the quiet one too.
    let loud = app
        .broadcast_with(
            "loud",
            ago(10),
            None,
            json!({"all": []}),
            BroadcastStatus::Active,
        )
        .await;
    app.ctx
        .ports
        .live
        .publish(LiveEvent::BroadcastActivated {
            broadcast: Box::new(loud.clone()),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let page = loop {
        let page = svc.page("u1", req).await.unwrap();
        if page.items.len() == 2 {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was not seen"
        );
        tokio::task::yield_now().await;
    };
    let ids: Vec<Uuid> = page.items.iter().map(|i| i.id).collect();
    assert_eq!(ids, [loud.id, quiet.id]);
    assert_eq!(page.unread_count, 2);
}

// ---------------------------------------------------------------------------------------------
// Feed states: seen, read, archived, and bulk actions

#[tokio::test]
async fn seen_read_and_archived_filter_both_kinds_and_the_counts() {
    let app = spawn_app().await;
    let p1 = app.personal("u1", "p1", ago(50)).await;
    let p2 = app.personal("u1", "p2", ago(40)).await;
    app.personal("u1", "p3", ago(30)).await;
    let b1 = app.broadcast("b1", ago(20)).await;
    let b2 = app.broadcast("b2", ago(10)).await;
    assert_eq!(app.counts("u1").await, (5, 5));

    let (status, body) = app
        .bulk("u1", json!({"action": "seen", "ids": [p1, b1]}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"updated": 2})));
    let (status, body) = app
        .bulk("u1", json!({"action": "archive", "ids": [p2, b2, p2]}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"updated": 2})));
    // Archived items leave the default view and both counts; seen ones the unseen count.
    assert_eq!(app.counts("u1").await, (3, 1));
    let page = app.inbox("u1", "").await;
    assert_eq!(titles(&page), ["b1", "p3", "p1"]);
    assert_eq!(
        (page["unread_count"].clone(), page["unseen_count"].clone()),
        (json!(3), json!(1))
    );
    for t in ["b1", "p1"] {
        let i = item(&page, t);
        assert_eq!(
            (i["seen"].clone(), i["read"].clone(), i["archived"].clone()),
            (json!(true), json!(false), json!(false)),
            "{t}"
        );
        assert!(
            i["seen_at"].is_string() && i["read_at"].is_null() && i["archived_at"].is_null(),
            "{i}"
        );
    }
    assert_eq!(titles(&app.inbox("u1", "?status=unseen").await), ["p3"]);
    assert_eq!(
        titles(&app.inbox("u1", "?status=unread").await),
        ["b1", "p3", "p1"]
    );
    let archived = app.inbox("u1", "?archived=only").await;
    assert_eq!(titles(&archived), ["b2", "p2"]);
    assert_eq!(item(&archived, "b2")["archived"], true);
    assert!(item(&archived, "p2")["archived_at"].is_string());
    assert_eq!(
        titles(&app.inbox("u1", "?archived=include&status=unseen").await),
        ["b2", "p3", "p2"]
    );
    // Paged one at a time through both kinds, the filter holds on every page.
    let mut walked = Vec::new();
    let mut query = "?archived=include&status=unseen&limit=1".to_owned();
    loop {
        let page = app.inbox("u1", &query).await;
        walked.extend(titles(&page));
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?archived=include&status=unseen&limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(walked, ["b2", "p3", "p2"]);

    // Read marks seen; unarchive brings items back.
    let (status, _) = app
        .bulk("u1", json!({"action": "read", "ids": [b2, p2]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .bulk("u1", json!({"action": "unarchive", "ids": [b2]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let page = app.inbox("u1", "").await;
    assert_eq!(titles(&page), ["b2", "b1", "p3", "p1"]);
    let b2_item = item(&page, "b2");
    assert_eq!(
        (b2_item["read"].clone(), b2_item["seen"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(app.counts("u1").await, (3, 1));
    // Another user's view is untouched.
    assert_eq!(app.counts("u2").await, (2, 2));
    assert_eq!(titles(&app.inbox("u2", "").await), ["b2", "b1"]);
}

#[tokio::test]
async fn bulk_actions_before_a_cursor_or_on_everything_cover_both_kinds() {
    let app = spawn_app().await;
    app.personal("u1", "p1", ago(50)).await;
    app.broadcast("b1", ago(40)).await;
    app.personal("u1", "p2", ago(30)).await;
    app.broadcast("b2", ago(20)).await;
    app.personal("u1", "p3", ago(10)).await;
    let page = app.inbox("u1", "").await;
    let cursor = item(&page, "p2")["cursor"].as_str().unwrap().to_owned();

    // Strictly older than p2: p1 and b1.
    let (status, body) = app
        .bulk("u1", json!({"action": "read", "before": cursor}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"updated": 2})));
    let unread = app.inbox("u1", "?status=unread").await;
    assert_eq!(titles(&unread), ["p3", "b2", "p2"]);
    let (_, body) = app
        .bulk("u1", json!({"action": "read", "before": cursor}))
        .await;
    assert_eq!(body, json!({"updated": 0}), "nothing left to change");

    let (status, body) = app
        .bulk("u1", json!({"action": "archive", "all": true}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"updated": 5})));
    assert!(titles(&app.inbox("u1", "").await).is_empty());
    assert_eq!(app.counts("u1").await, (0, 0));
    assert_eq!(titles(&app.inbox("u1", "?archived=only").await).len(), 5);
    let (_, body) = app
        .bulk("u1", json!({"action": "unarchive", "all": true}))
        .await;
    assert_eq!(body, json!({"updated": 5}));
    assert_eq!(app.counts("u1").await, (3, 3));

    // Seen all: the watermark covers the personal rows, each broadcast is marked.
    let (_, body) = app.bulk("u1", json!({"action": "seen", "all": true})).await;
    assert_eq!(body, json!({"updated": 3}));
    assert_eq!(app.counts("u1").await, (3, 0));
    // A row that arrives later with an older time is seen already.
    app.personal("u1", "late", ago(60)).await;
    assert_eq!(app.counts("u1").await, (4, 0));
    assert_eq!(item(&app.inbox("u1", "").await, "late")["seen"], true);
    // Read all through bulk: everything read, as `read_all` does.
    let (_, body) = app.bulk("u1", json!({"action": "read", "all": true})).await;
    assert_eq!(body, json!({"updated": 4}));
    assert_eq!(app.counts("u1").await, (0, 0));
}

#[tokio::test]
async fn ids_the_user_has_no_item_for_are_listed_as_not_found() {
    let app = spawn_app().await;
    let mine = app.personal("u1", "mine", ago(20)).await;
    let theirs = app.personal("u2", "theirs", ago(10)).await;
    let dismissed = app.personal("u1", "gone", ago(5)).await;
    assert_eq!(
        app.post("u1", &format!("/v1/inbox/{dismissed}/dismiss"))
            .await
            .0,
        204
    );
    let unknown = Uuid::now_v7();
    let (status, body) = app
        .bulk(
            "u1",
            json!({"action": "archive", "ids": [mine, theirs, dismissed, unknown]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"updated": 1, "not_found": [theirs, dismissed, unknown]})
    );
    assert_eq!(titles(&app.inbox("u2", "").await), ["theirs"]);
    assert_eq!(titles(&app.inbox("u1", "?archived=only").await), ["mine"]);
}

#[tokio::test]
async fn bad_bulk_requests_and_filters_are_422_and_change_nothing() {
    let app = spawn_app().await;
    let p = app.personal("u1", "p", ago(20)).await;
    app.broadcast("b", ago(10)).await;
    let too_many: Vec<String> = (0..101).map(|_| Uuid::now_v7().to_string()).collect();
    for body in [
        json!({"action": "hide", "ids": [p]}),
        json!({"ids": [p]}),
        json!({"action": "read"}),
        json!({"action": "read", "all": false}),
        json!({"action": "read", "ids": []}),
        json!({"action": "read", "ids": too_many}),
        json!({"action": "read", "ids": ["not-a-uuid"]}),
        json!({"action": "read", "ids": [p], "all": true}),
        json!({"action": "read", "ids": [p], "before": "x"}),
        json!({"action": "read", "before": "not-a-cursor"}),
        json!({"action": "read", "before": 5}),
        json!({"action": "read", "ids": [p], "older": true}),
        json!(["read"]),
    ] {
        let (status, reply) = app.bulk("u1", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {reply}");
        error_message(&reply, "invalid");
    }
    let (status, _) = app
        .send(
            app.client
                .post(format!("{}/v1/inbox/bulk", app.base))
                .bearer_auth(token(&app, "u1"))
                .body("{not json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for query in [
        "?status=maybe",
        "?archived=sometimes",
        "?status=unseen&unread_only=true",
    ] {
        let (status, body) = app
            .call("u1", Method::GET, &format!("/v1/inbox{query}"))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        error_message(&body, "invalid");
    }
    // Nothing changed.
    assert_eq!(app.counts("u1").await, (2, 2));
    assert_eq!(titles(&app.inbox("u1", "").await), ["b", "p"]);
    assert_eq!(
        titles(&app.inbox("u1", "?unread_only=true&status=unread").await),
        ["b", "p"]
    );
}

#[tokio::test]
async fn bulk_changes_are_published_on_the_live_hub() {
    let app = spawn_app().await;
    let p = app.personal("u1", "p", ago(20)).await;
    let b = app.broadcast("b", ago(10)).await;
    let subscription = app.ctx.ports.live.subscribe().await.unwrap();
    subscription.routes.follow("u1").await.unwrap();
    let mut events = subscription.events;
    let (status, _) = app
        .bulk(
            "u1",
            json!({"action": "archive", "ids": [p, b, Uuid::now_v7()]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        next_event(&mut events).await,
        LiveEvent::Marked {
            user_id: "u1".into(),
            action: InboxAction::Archive,
            ids: vec![p.to_string(), b.to_string()],
            before: None,
            all: false,
        }
    );
    // Nothing of the user's named: nothing published (the next event is the read all).
    let (status, _) = app
        .bulk("u1", json!({"action": "seen", "ids": [Uuid::now_v7()]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.bulk("u1", json!({"action": "seen", "all": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        next_event(&mut events).await,
        LiveEvent::Marked {
            user_id: "u1".into(),
            action: InboxAction::Seen,
            ids: Vec::new(),
            before: None,
            all: true,
        }
    );
}
