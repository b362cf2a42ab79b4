//! Conformance suite of the `Directory` port, written once and run against every engine:
//! always on SQLite, on MySQL/MariaDB when `HERALD_TEST_MYSQL_URL` is set.
//!
//! Engines share one database across tests, so every case works under its own random prefix
//! and never assumes an empty table.

mod common;

use chrono::{Duration, Utc};
use common::{run_id, utc};
use herald_core::filter::Filter;
use herald_core::model::*;
use herald_core::ports::Directory;
use serde_json::json;
use std::sync::Arc;

fn user(id: &str, attrs: serde_json::Value) -> User {
    let now = utc("2026-01-01T00:00:00Z");
    User {
        id: id.to_owned(),
        email: Some(format!("{id}@example.com")),
        phone: None,
        attributes: attrs.as_object().cloned().unwrap_or_default(),
        created_at: now,
        updated_at: now,
    }
}

fn filter(v: serde_json::Value) -> Filter {
    Filter::parse(&v).expect("valid filter")
}

pub mod cases {
    use super::*;

    pub async fn upserted_users_read_back_with_their_attributes(d: Arc<dyn Directory>) {
        let p = run_id();
        let u = user(
            &format!("{p}-a"),
            json!({"tier": "premium", "score": 4.5, "age": 30, "beta": true, "tags": ["x", "y"], "none": null}),
        );
        assert_eq!(d.upsert_users(std::slice::from_ref(&u)).await.unwrap(), 1);
        let got = d.get_user(&u.id).await.unwrap().expect("user exists");
        assert_eq!(got, u);
        assert!(d.get_user(&format!("{p}-missing")).await.unwrap().is_none());
    }

    pub async fn upserting_again_replaces_fields_and_keeps_created_at(d: Arc<dyn Directory>) {
        let p = run_id();
        let first = user(&format!("{p}-a"), json!({"tier": "free", "locale": "en"}));
        d.upsert_users(std::slice::from_ref(&first)).await.unwrap();
        let mut second = user(&first.id, json!({"tier": "premium"}));
        second.email = None;
        second.phone = Some("+33123".into());
        second.created_at = utc("2026-02-01T00:00:00Z");
        second.updated_at = utc("2026-02-01T00:00:00Z");
        d.upsert_users(std::slice::from_ref(&second)).await.unwrap();
        let got = d.get_user(&first.id).await.unwrap().unwrap();
        assert_eq!(
            got.attributes, second.attributes,
            "attributes replaced whole"
        );
        assert_eq!(got.email, None);
        assert_eq!(got.phone.as_deref(), Some("+33123"));
        assert_eq!(got.created_at, first.created_at, "created_at kept");
        assert_eq!(got.updated_at, second.updated_at);
    }

    pub async fn get_users_returns_only_the_ones_that_exist(d: Arc<dyn Directory>) {
        let p = run_id();
        let users: Vec<User> = (0..3)
            .map(|i| user(&format!("{p}-{i}"), json!({})))
            .collect();
        d.upsert_users(&users).await.unwrap();
        let mut ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
        ids.push(format!("{p}-nobody"));
        let mut got: Vec<String> = d
            .get_users(&ids)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.id)
            .collect();
        got.sort();
        assert_eq!(got, ids[..3].to_vec());
    }

    pub async fn users_read_for_some_attributes_hold_those_alone(d: Arc<dyn Directory>) {
        let p = run_id();
        let a = user(
            &format!("{p}-a"),
            json!({"name": "Ana", "tier": "gold", "nested": {"x": [1, {"y": null}]}, "locale": "pt"}),
        );
        let mut b = user(&format!("{p}-b"), json!({"tier": "free"}));
        b.phone = Some("+33123".into());
        d.upsert_users(&[a.clone(), b.clone()]).await.unwrap();
        let ids = vec![a.id.clone(), b.id.clone(), format!("{p}-nobody")];
        let keys = AttributeKeys::none().with(&["name", "locale", "absent"]);
        let mut got = d.get_users_keeping(&ids, &keys).await.unwrap();
        got.sort_by(|x, y| x.id.cmp(&y.id));
        let (mut want_a, mut want_b) = (a.clone(), b.clone());
        keys.retain(&mut want_a.attributes);
        keys.retain(&mut want_b.attributes);
        assert_eq!(
            got,
            vec![want_a, want_b],
            "ids, addresses and times kept whole"
        );
        // Keeping no attribute (an in-app fan-out whose templates read none) still reads
        // the users whole otherwise.
        let mut bare = d
            .get_users_keeping(&ids, &AttributeKeys::none())
            .await
            .unwrap();
        bare.sort_by(|x, y| x.id.cmp(&y.id));
        let (mut bare_a, mut bare_b) = (a.clone(), b.clone());
        bare_a.attributes.clear();
        bare_b.attributes.clear();
        assert_eq!(bare, vec![bare_a, bare_b]);
        let mut all = d
            .get_users_keeping(&ids, &AttributeKeys::All)
            .await
            .unwrap();
        all.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(all, vec![a, b]);
    }

    pub async fn a_batch_of_users_reads_each_one_asked_for_neighbours_or_scattered_once(
        d: Arc<dyn Directory>,
    ) {
        let p = run_id();
        let users: Vec<User> = (0..1_000)
            .map(|i| user(&format!("{p}-{i:04}"), json!({"n": i, "tier": "gold"})))
            .collect();
        d.upsert_users(&users).await.unwrap();
        let keys = AttributeKeys::none().with(&["n"]);
        let id = |i: usize| format!("{p}-{i:04}");
        let batches: Vec<(&str, Vec<String>)> = vec![
            ("neighbours", (100..400).map(id).collect()),
            ("scattered", (0..1_000).step_by(9).map(id).collect()),
            (
                "neighbours then scattered",
                (300..600).chain((600..1_000).step_by(13)).map(id).collect(),
            ),
            (
                "scattered then neighbours",
                (0..300).step_by(11).chain(700..900).map(id).collect(),
            ),
            ("a few", vec![id(5), id(900)]),
        ];
        for (what, asked) in batches {
            // Shuffled, with ids that are nobody's (between users, before and after them) and
            // one asked twice.
            let mut ids: Vec<String> = asked.iter().rev().cloned().collect();
            ids.extend([
                format!("{p}-0150-gone"),
                format!("{p}-"),
                format!("{p}-9999"),
                asked[asked.len() / 2].clone(),
            ]);
            let got = d.get_users_keeping(&ids, &keys).await.unwrap();
            let mut got_ids: Vec<String> = got.iter().map(|u| u.id.clone()).collect();
            got_ids.sort();
            let mut want = asked.clone();
            want.sort();
            assert_eq!(
                got_ids, want,
                "{what}: each existing user once, nobody else"
            );
            for u in &got {
                let n: usize = u.id[p.len() + 1..].parse().unwrap();
                assert_eq!(
                    serde_json::Value::Object(u.attributes.clone()),
                    json!({"n": n}),
                    "{what}: {} with the attributes kept",
                    u.id
                );
                assert_eq!(
                    u.email.as_deref(),
                    Some(format!("{}@example.com", u.id).as_str())
                );
            }
        }
    }

    pub async fn a_bulk_upsert_larger_than_one_statement_writes_every_user(d: Arc<dyn Directory>) {
        let p = run_id();
        let users: Vec<User> = (0..12_345)
            .map(|i| user(&format!("{p}-{i:06}"), json!({"run": p, "n": i})))
            .collect();
        assert_eq!(d.upsert_users(&users).await.unwrap(), 12_345);
        let f = filter(json!({"attr": "run", "eq": p}));
        assert_eq!(d.count_users(&f, Utc::now()).await.unwrap(), 12_345);
    }

    pub async fn deleting_a_user_removes_their_preferences_and_devices(d: Arc<dyn Directory>) {
        let p = run_id();
        let u = user(&format!("{p}-a"), json!({}));
        d.upsert_users(std::slice::from_ref(&u)).await.unwrap();
        let prefs = Preferences {
            channels: [(Channel::Email, false)].into_iter().collect(),
            ..Default::default()
        };
        assert!(d.put_preferences(&u.id, &prefs).await.unwrap());
        let now = utc("2026-01-01T00:00:00Z");
        let dev = Device {
            user_id: u.id.clone(),
            platform: Platform::Fcm,
            token: format!("{p}-tok"),
            created_at: now,
            last_used_at: now,
        };
        assert!(d.put_device(&dev).await.unwrap());
        assert!(d.delete_user(&u.id).await.unwrap());
        assert!(
            !d.delete_user(&u.id).await.unwrap(),
            "second delete finds nothing"
        );
        assert!(d.get_user(&u.id).await.unwrap().is_none());
        assert!(d
            .get_preferences(std::slice::from_ref(&u.id))
            .await
            .unwrap()
            .is_empty());
        assert!(d
            .list_devices(std::slice::from_ref(&u.id))
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn paging_by_id_visits_every_matching_user_once_in_order(d: Arc<dyn Directory>) {
        let p = run_id();
        let users: Vec<User> = (0..250)
            .map(|i| {
                let tier = if i % 3 == 0 { "premium" } else { "free" };
                user(&format!("{p}-{i:04}"), json!({"run": p, "tier": tier}))
            })
            .collect();
        d.upsert_users(&users).await.unwrap();
        let f =
            filter(json!({"all": [{"attr": "run", "eq": p}, {"attr": "tier", "eq": "premium"}]}));
        let now = Utc::now();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = d.page_user_ids(&f, after.as_deref(), 7, now).await.unwrap();
            assert!(page.len() <= 7);
            if page.is_empty() {
                break;
            }
            after = page.last().cloned();
            seen.extend(page);
        }
        let expected: Vec<String> = users
            .iter()
            .filter(|u| u.attributes["tier"] == "premium")
            .map(|u| u.id.clone())
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(d.count_users(&f, now).await.unwrap(), expected.len() as u64);

        let full = d.page_users(&f, None, 1000, now).await.unwrap();
        let full_ids: Vec<String> = full.iter().map(|u| u.id.clone()).collect();
        assert_eq!(full_ids, expected);
        assert!(full.iter().all(|u| u.attributes["tier"] == "premium"));
    }

    pub async fn a_selective_or_dense_audience_pages_in_id_order_and_counts_alike(
        d: Arc<dyn Directory>,
    ) {
        let p = run_id();
        // Ranks run against the ids, so an index on rank does not list users in id order.
        let users: Vec<User> = (0..300)
            .map(|i| user(&format!("{p}-{i:04}"), json!({"run": p, "rank": 299 - i})))
            .collect();
        d.upsert_users(&users).await.unwrap();
        let now = Utc::now();
        // A segment comparing both attributes (on SQLite: both get an index).
        d.put_segment(&Segment {
            name: format!("{p}-top"),
            filter: filter(json!({"all": [{"attr": "run", "eq": p}, {"attr": "rank", "lt": 20}]})),
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
        // Few matches (read from an index and sorted), many (the id walk), one, none.
        for (bound, page_size) in [(20, 7), (250, 7), (1, 5), (0, 5), (20, 1000)] {
            let f =
                filter(json!({"all": [{"attr": "rank", "lt": bound}, {"attr": "run", "eq": p}]}));
            let expected: Vec<String> = users
                .iter()
                .filter(|u| u.attributes["rank"].as_i64().unwrap() < bound)
                .map(|u| u.id.clone())
                .collect();
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = d
                    .page_user_ids(&f, after.as_deref(), page_size, now)
                    .await
                    .unwrap();
                assert!(page.len() <= page_size as usize);
                if page.is_empty() {
                    break;
                }
                after = page.last().cloned();
                seen.extend(page);
            }
            assert_eq!(seen, expected, "rank < {bound}, pages of {page_size}");
            assert_eq!(d.count_users(&f, now).await.unwrap(), expected.len() as u64);
            let users_page = d.page_users(&f, None, page_size, now).await.unwrap();
            let ids: Vec<String> = users_page.iter().map(|u| u.id.clone()).collect();
            let first: Vec<String> = expected.iter().take(page_size as usize).cloned().collect();
            assert_eq!(ids, first, "page_users, rank < {bound}");
        }
    }

    pub async fn relative_time_filters_select_recently_active_users(d: Arc<dyn Directory>) {
        let p = run_id();
        let now = utc("2026-03-01T12:00:00Z");
        let recent = (now - Duration::days(3))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let old = (now - Duration::days(90))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        d.upsert_users(&[
            user(
                &format!("{p}-recent"),
                json!({"run": p, "last_active_at": recent}),
            ),
            user(
                &format!("{p}-old"),
                json!({"run": p, "last_active_at": old}),
            ),
            user(&format!("{p}-never"), json!({"run": p})),
        ])
        .await
        .unwrap();
        let f = filter(
            json!({"all": [{"attr": "run", "eq": p}, {"attr": "last_active_at", "gte": "now-30d"}]}),
        );
        let ids = d.page_user_ids(&f, None, 10, now).await.unwrap();
        assert_eq!(ids, vec![format!("{p}-recent")]);
    }

    pub async fn segments_are_upserted_listed_by_name_and_deleted(d: Arc<dyn Directory>) {
        let p = run_id();
        let t0 = utc("2026-01-01T00:00:00Z");
        let t1 = utc("2026-01-02T00:00:00Z");
        for name in ["b", "a", "c"] {
            d.put_segment(&Segment {
                name: format!("{p}-{name}"),
                filter: filter(json!({"attr": "tier", "eq": name})),
                created_at: t0,
                updated_at: t0,
            })
            .await
            .unwrap();
        }
        d.put_segment(&Segment {
            name: format!("{p}-a"),
            filter: filter(json!({"attr": "tier", "eq": "changed"})),
            created_at: t1,
            updated_at: t1,
        })
        .await
        .unwrap();
        let a = d.get_segment(&format!("{p}-a")).await.unwrap().unwrap();
        assert_eq!(a.filter, filter(json!({"attr": "tier", "eq": "changed"})));
        assert_eq!(a.created_at, t0);
        assert_eq!(a.updated_at, t1);

        let first = d.list_segments(Some(&p), 2).await.unwrap();
        let names: Vec<&str> = first.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec![format!("{p}-a"), format!("{p}-b")]);
        let rest = d.list_segments(Some(&format!("{p}-b")), 1).await.unwrap();
        assert_eq!(rest[0].name, format!("{p}-c"));

        assert!(d.delete_segment(&format!("{p}-b")).await.unwrap());
        assert!(!d.delete_segment(&format!("{p}-b")).await.unwrap());
        assert!(d.get_segment(&format!("{p}-b")).await.unwrap().is_none());
    }

    pub async fn preferences_round_trip_and_unknown_users_are_refused(d: Arc<dyn Directory>) {
        let p = run_id();
        let u = user(&format!("{p}-a"), json!({}));
        d.upsert_users(std::slice::from_ref(&u)).await.unwrap();
        let prefs: Preferences = serde_json::from_value(json!({
            "channels": {"push": true, "email": false},
            "categories": {"marketing": {"sms": false}},
            "quiet_hours": {"start": "22:00", "end": "07:00"}
        }))
        .unwrap();
        assert!(d.put_preferences(&u.id, &prefs).await.unwrap());
        assert!(!d
            .put_preferences(&format!("{p}-nobody"), &prefs)
            .await
            .unwrap());
        let got = d
            .get_preferences(&[u.id.clone(), format!("{p}-nobody")])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[&u.id], prefs);

        let replaced = Preferences::default();
        assert!(d.put_preferences(&u.id, &replaced).await.unwrap());
        let got = d
            .get_preferences(std::slice::from_ref(&u.id))
            .await
            .unwrap();
        assert_eq!(got[&u.id], replaced);
    }

    pub async fn a_device_token_belongs_to_the_user_who_registered_it_last(d: Arc<dyn Directory>) {
        let p = run_id();
        let (a, b) = (format!("{p}-a"), format!("{p}-b"));
        d.upsert_users(&[user(&a, json!({})), user(&b, json!({}))])
            .await
            .unwrap();
        let t0 = utc("2026-01-01T00:00:00Z");
        let t1 = utc("2026-01-05T00:00:00Z");
        let token = format!("{p}-token");
        let dev = |user_id: &str, at| Device {
            user_id: user_id.to_owned(),
            platform: Platform::Apns,
            token: token.clone(),
            created_at: at,
            last_used_at: at,
        };
        assert!(d.put_device(&dev(&a, t0)).await.unwrap());
        // Registering again for the same user keeps created_at.
        assert!(d.put_device(&dev(&a, t1)).await.unwrap());
        let got = d.list_devices(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].created_at, t0);
        assert_eq!(got[0].last_used_at, t1);
        // Another user registering the token takes it over.
        assert!(d.put_device(&dev(&b, t1)).await.unwrap());
        assert!(d
            .list_devices(std::slice::from_ref(&a))
            .await
            .unwrap()
            .is_empty());
        let got = d.list_devices(std::slice::from_ref(&b)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].created_at, t1);
        // Unknown users cannot hold tokens.
        assert!(!d
            .put_device(&dev(&format!("{p}-nobody"), t1))
            .await
            .unwrap());
        // Deleting needs the right owner.
        assert!(!d.delete_device(&a, &token).await.unwrap());
        assert!(d.delete_device(&b, &token).await.unwrap());
    }

    /// A batch registers as one device at a time would, larger than one statement, and
    /// leaves out (and names) the users that do not exist.
    pub async fn a_device_batch_registers_like_single_devices_and_names_unknown_users(
        d: Arc<dyn Directory>,
    ) {
        let p = run_id();
        let users: Vec<User> = (0..3000)
            .map(|i| user(&format!("{p}-u{i:05}"), json!({})))
            .collect();
        d.upsert_users(&users).await.unwrap();
        let t0 = utc("2026-01-01T00:00:00Z");
        let t1 = utc("2026-01-05T00:00:00Z");
        let dev = |user_id: &str, token: &str, at| Device {
            user_id: user_id.to_owned(),
            platform: Platform::Fcm,
            token: token.to_owned(),
            created_at: at,
            last_used_at: at,
        };
        // A token a user registered earlier keeps its created_at; one that moves starts over.
        let (kept, moved) = (format!("{p}-kept"), format!("{p}-moved"));
        assert!(d.put_device(&dev(&users[0].id, &kept, t0)).await.unwrap());
        assert!(d.put_device(&dev(&users[1].id, &moved, t0)).await.unwrap());

        let mut batch: Vec<Device> = users
            .iter()
            .map(|u| dev(&u.id, &format!("{}-t", u.id), t1))
            .collect();
        batch.push(dev(&users[0].id, &kept, t1));
        batch.push(dev(&users[2].id, &moved, t1));
        let (ghost1, ghost2) = (format!("{p}-ghost1"), format!("{p}-ghost0"));
        batch.insert(10, dev(&ghost1, &format!("{p}-g1"), t1));
        batch.push(dev(&ghost2, &format!("{p}-g2"), t1));
        batch.push(dev(&ghost1, &format!("{p}-g3"), t1));
        // Of two devices with one token in a batch, the later wins.
        let twice = format!("{p}-twice");
        batch.push(dev(&users[3].id, &twice, t1));
        batch.push(dev(&users[4].id, &twice, t1));

        let unknown = d.put_devices(&batch).await.unwrap();
        assert_eq!(
            unknown,
            vec![ghost2.clone(), ghost1.clone()],
            "sorted, each once"
        );

        let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
        let mut got = d.list_devices(&ids).await.unwrap();
        got.sort_by(|a, b| a.token.cmp(&b.token));
        assert_eq!(got.len(), 3000 + 3);
        let by_token = |t: &str| got.iter().find(|x| x.token == t).unwrap().clone();
        assert_eq!(by_token(&kept).user_id, users[0].id);
        assert_eq!(by_token(&kept).created_at, t0);
        assert_eq!(by_token(&kept).last_used_at, t1);
        assert_eq!(by_token(&moved).user_id, users[2].id);
        assert_eq!(by_token(&moved).created_at, t1);
        assert_eq!(by_token(&twice).user_id, users[4].id);
        assert_eq!(
            by_token(&format!("{}-t", users[2999].id)).user_id,
            users[2999].id
        );
        assert!(d.list_devices(&[ghost1, ghost2]).await.unwrap().is_empty());
        // Registering the same batch again changes nothing.
        d.put_devices(&batch).await.unwrap();
        assert_eq!(d.list_devices(&ids).await.unwrap().len(), 3003);
        assert!(d.put_devices(&[]).await.unwrap().is_empty());
    }

    pub async fn invalid_and_stale_tokens_are_removed(d: Arc<dyn Directory>) {
        let p = run_id();
        let a = format!("{p}-a");
        d.upsert_users(&[user(&a, json!({}))]).await.unwrap();
        let old = utc("2020-01-01T00:00:00Z");
        for i in 0..4 {
            d.put_device(&Device {
                user_id: a.clone(),
                platform: Platform::Fcm,
                token: format!("{p}-t{i}"),
                created_at: old,
                last_used_at: old,
            })
            .await
            .unwrap();
        }
        assert_eq!(
            d.delete_tokens(&[format!("{p}-t0"), format!("{p}-nope")])
                .await
                .unwrap(),
            1
        );
        let recent = Utc::now();
        d.touch_tokens(&[format!("{p}-t1")], recent).await.unwrap();
        // Other tests' devices may be stale too; ours must be among the deleted.
        d.delete_devices_unused_since(utc("2021-01-01T00:00:00Z"))
            .await
            .unwrap();
        let left: Vec<String> = d
            .list_devices(std::slice::from_ref(&a))
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.token)
            .collect();
        assert_eq!(left, vec![format!("{p}-t1")]);
    }

    pub async fn templates_are_upserted_listed_and_deleted(d: Arc<dyn Directory>) {
        let p = run_id();
        let t0 = utc("2026-01-01T00:00:00Z");
        let content: TemplateContent = serde_json::from_value(json!({
            "in_app": {"title": "Hi {{ user.name }}", "body": "b"},
            "email": {"subject": "s", "text": "t", "html": "<b>h</b>"},
            "sms": {"text": "x"},
        }))
        .unwrap();
        for id in ["one", "two"] {
            d.put_template(&Template {
                id: format!("{p}-{id}"),
                content: content.clone(),
                created_at: t0,
                updated_at: t0,
            })
            .await
            .unwrap();
        }
        let got = d.get_template(&format!("{p}-one")).await.unwrap().unwrap();
        assert_eq!(got.content, content);
        let listed = d.list_templates(Some(&p), 10).await.unwrap();
        let ids: Vec<String> = listed
            .into_iter()
            .map(|t| t.id)
            .filter(|id| id.starts_with(&p))
            .collect();
        assert_eq!(ids, vec![format!("{p}-one"), format!("{p}-two")]);
        assert!(d.delete_template(&format!("{p}-one")).await.unwrap());
        assert!(d.get_template(&format!("{p}-one")).await.unwrap().is_none());
    }
}

/// Generates one `#[tokio::test]` per case for an engine.
macro_rules! directory_conformance {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::*;
            directory_conformance!(@cases $make;
                upserted_users_read_back_with_their_attributes,
                upserting_again_replaces_fields_and_keeps_created_at,
                get_users_returns_only_the_ones_that_exist,
                users_read_for_some_attributes_hold_those_alone,
                a_batch_of_users_reads_each_one_asked_for_neighbours_or_scattered_once,
                a_bulk_upsert_larger_than_one_statement_writes_every_user,
                deleting_a_user_removes_their_preferences_and_devices,
                paging_by_id_visits_every_matching_user_once_in_order,
                a_selective_or_dense_audience_pages_in_id_order_and_counts_alike,
                relative_time_filters_select_recently_active_users,
                segments_are_upserted_listed_by_name_and_deleted,
                preferences_round_trip_and_unknown_users_are_refused,
                a_device_token_belongs_to_the_user_who_registered_it_last,
                a_device_batch_registers_like_single_devices_and_names_unknown_users,
                invalid_and_stale_tokens_are_removed,
                templates_are_upserted_listed_and_deleted,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(d) = $make.await {
                    cases::$case(d).await;
                }
            }
        )*
    };
}

directory_conformance!(sqlite, common::sqlite_directory());
directory_conformance!(mysql, common::mysql_directory());

/// SQLite indexes the attributes its segments compare, on the very expression the filter's SQL
/// compares, so that a selective segment reads an index instead of every user's JSON.
mod sqlite_attribute_indexes {
    use super::*;
    use herald_core::filter::{sqlite_typed_value, AttrIndex, AttrType, SqlDialect, SqlParam};
    use herald_storage::sqlite::SqliteDirectory;
    use herald_storage::BackendUrl;
    use std::collections::HashSet;

    fn slugs(set: &HashSet<AttrIndex>) -> Vec<String> {
        let mut v: Vec<String> = set.iter().map(AttrIndex::slug).collect();
        v.sort();
        v
    }

    fn segment(name: &str, f: serde_json::Value) -> Segment {
        let now = Utc::now();
        Segment {
            name: name.into(),
            filter: filter(f),
            created_at: now,
            updated_at: now,
        }
    }

    async fn open(path: &std::path::Path) -> SqliteDirectory {
        let url = BackendUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
        SqliteDirectory::open(&url).await.unwrap()
    }

    #[tokio::test]
    async fn a_segment_indexes_the_attributes_it_compares_until_no_segment_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.db");
        let d = open(&path).await;
        assert!(d.attr_indexes().await.unwrap().is_empty());
        d.put_segment(&segment(
            "a",
            json!({"all": [
                {"attr": "tier", "eq": "gold"},
                {"attr": "score", "gte": 10},
                {"not": {"attr": "x", "eq": 1}},
                {"any": [{"attr": "y", "eq": 1}]},
            ]}),
        ))
        .await
        .unwrap();
        d.put_segment(&segment("b", json!({"attr": "tier", "in": ["a", "b"]})))
            .await
            .unwrap();
        assert_eq!(
            slugs(&d.attr_indexes().await.unwrap()),
            ["number_score", "text_tier"]
        );
        // Changing a segment's filter moves its indexes.
        d.put_segment(&segment("a", json!({"attr": "vip", "eq": true})))
            .await
            .unwrap();
        assert_eq!(
            slugs(&d.attr_indexes().await.unwrap()),
            ["bool_vip", "text_tier"]
        );
        assert!(d.delete_segment("a").await.unwrap());
        assert_eq!(slugs(&d.attr_indexes().await.unwrap()), ["text_tier"]);
        assert!(d.delete_segment("b").await.unwrap());
        assert!(d.attr_indexes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn segments_written_without_their_indexes_get_them_on_open_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.db");
        drop(open(&path).await);
        {
            // Segments as an earlier version wrote them: no index.
            use sqlx::ConnectOptions;
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .connect()
                .await
                .unwrap();
            for i in 0..40 {
                let f = json!({"attr": format!("a{i:02}"), "eq": i});
                sqlx::query("INSERT INTO segments VALUES (?, ?, ?, 0)")
                    .bind(format!("s{i:02}"))
                    .bind(f.to_string())
                    .bind(i64::from(i))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
        let d = open(&path).await;
        let built = slugs(&d.attr_indexes().await.unwrap());
        let oldest: Vec<String> = (0..herald_storage::sqlite::MAX_ATTR_INDEXES)
            .map(|i| format!("number_a{i:02}"))
            .collect();
        assert_eq!(built, oldest);
    }

    #[tokio::test]
    async fn the_selective_form_of_a_filter_is_read_through_its_attribute_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.db");
        let d = open(&path).await;
        d.put_segment(&segment("s", json!({"attr": "n", "lt": 1})))
            .await
            .unwrap();
        let f = filter(json!({"all": [{"attr": "n", "lt": 1}, {"attr": "x", "exists": false}]}));
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        for (selective, uses_index) in [(true, true), (false, false)] {
            let frag = if selective {
                f.to_sql_selective(SqlDialect::Sqlite, "attributes", Utc::now())
            } else {
                f.to_sql(SqlDialect::Sqlite, "attributes", Utc::now())
            };
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT id FROM users WHERE id > '' AND ({}) ORDER BY id LIMIT 10",
                frag.sql
            );
            let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&sql);
            for param in frag.params {
                q = match param {
                    SqlParam::Text(t) => q.bind(t),
                    SqlParam::Int(i) => q.bind(i),
                    SqlParam::Float(x) => q.bind(x),
                };
            }
            let rows = q.fetch_all(&mut conn).await.unwrap();
            let text: String = rows.iter().map(|r| r.3.clone() + "\n").collect();
            assert_eq!(
                text.contains("USING INDEX users_attr_number_n"),
                uses_index,
                "selective: {selective}\n{text}"
            );
        }
        // The index is built on the expression the filter compares.
        let (index_sql,): (String,) =
            sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = 'users_attr_number_n'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(index_sql.contains(&sqlite_typed_value("attributes", "n", AttrType::Number)));
    }
}

/// SQLite keeps the number of users in a row of its own (triggers), so `all` is sized without a
/// scan: it must follow every write path exactly, and start right on a file written before it.
mod sqlite_user_count {
    use super::*;
    use herald_storage::sqlite::SqliteDirectory;
    use herald_storage::BackendUrl;

    /// Every user, counted by a scan (a filter that is not `match_all`).
    async fn scanned(d: &dyn Directory) -> u64 {
        let everyone = filter(json!({"not": {"attr": "no_such_attribute", "exists": true}}));
        d.count_users(&everyone, Utc::now()).await.unwrap()
    }

    async fn counted(d: &dyn Directory) -> u64 {
        d.count_users(&Filter::match_all(), Utc::now())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_count_of_all_users_follows_inserts_upserts_duplicates_and_deletes() {
        let d = common::sqlite_directory().await.unwrap();
        assert_eq!(counted(d.as_ref()).await, 0);
        let batch: Vec<User> = (0..2500)
            .map(|i| user(&format!("u{i}"), json!({})))
            .collect();
        d.upsert_users(&batch).await.unwrap();
        assert_eq!(counted(d.as_ref()).await, 2500);
        // The same users again, some new ones, and one id twice in a batch.
        let mut again = batch[..100].to_vec();
        again.push(user("new-1", json!({"tier": "free"})));
        again.push(user("new-1", json!({"tier": "plus"})));
        again.push(user("new-2", json!({})));
        d.upsert_users(&again).await.unwrap();
        assert_eq!(counted(d.as_ref()).await, 2502);
        assert!(d.delete_user("u7").await.unwrap());
        assert!(!d.delete_user("u7").await.unwrap());
        assert!(!d.delete_user("nobody").await.unwrap());
        assert_eq!(counted(d.as_ref()).await, 2501);
        assert_eq!(counted(d.as_ref()).await, scanned(d.as_ref()).await);
    }

    #[tokio::test]
    async fn a_directory_written_before_the_count_existed_starts_with_its_users_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.db");
        {
            use sqlx::ConnectOptions;
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .connect()
                .await
                .unwrap();
            let first = include_str!("../../migrations/sqlite/directory/0001_init.sql");
            sqlx::raw_sql(first).execute(&mut conn).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE herald_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL);
                 INSERT INTO herald_migrations VALUES ('0001_init', 0);
                 INSERT INTO users (id, created_at, updated_at) VALUES ('a', 0, 0), ('b', 0, 0), ('c', 0, 0);",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let url = BackendUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
        let d = SqliteDirectory::open(&url).await.unwrap();
        assert_eq!(counted(&d).await, 3);
        d.upsert_users(&[user("d", json!({}))]).await.unwrap();
        assert_eq!(counted(&d).await, 4);
        // Opening again applies nothing twice.
        drop(d);
        let d = SqliteDirectory::open(&url).await.unwrap();
        assert_eq!(counted(&d).await, 4);
    }
}
