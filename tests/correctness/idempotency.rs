//! One `Idempotency-Key`, at most one campaign: whatever failed after the key was claimed (the
//! bus, the process), a retry finds the campaign bound to the key, and the audience gets the
//! notification once.

use crate::harness::*;
use herald_core::ports::IdempotencyClaim;
use herald_usecases::campaigns::IdempotencyKey;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn body() -> Value {
    json!({
        "audience": {"users": ["ann", "bob", "cyd"]},
        "content": {"title": "Once", "body": "only once"},
        "channels": ["in_app"],
    })
}

async fn post(app: &App, key: &str, body: Value) -> (StatusCode, Value, bool) {
    let ((s, b), headers) = app
        .call_with(
            Method::POST,
            "/v1/campaigns",
            Some(body),
            &[("idempotency-key", key)],
        )
        .await;
    (s, b, headers.contains_key("idempotent-replayed"))
}

async fn campaign_count(app: &App) -> usize {
    let (_, list) = app.call(Method::GET, "/v1/campaigns?limit=100", None).await;
    list["campaigns"].as_array().expect("campaigns").len()
}

#[tokio::test]
async fn a_retry_after_the_dispatch_hint_failed_replays_the_one_campaign_and_the_audience_gets_it_once(
) {
    let bus = Arc::new(std::sync::Mutex::new(None::<Arc<FaultyBus>>));
    let keep = bus.clone();
    let app = spawn(Options {
        wrap: Box::new(move |mut ports| {
            let faulty = FaultyBus::wrap(ports.bus.clone());
            *keep.lock().unwrap() = Some(faulty.clone());
            ports.bus = faulty;
            ports
        }),
        ..Options::default()
    })
    .await;
    let bus = bus.lock().unwrap().clone().expect("wrapped");
    bus.fail_dispatch.store(true, Ordering::SeqCst);

    // The bus refuses the hint after the campaign is stored: the campaign stands, and the
    // client is told so.
    let (s, first, replayed) = post(&app, "spring-1", body()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    assert!(!replayed);
    // The client retries anyway (it saw a timeout, say): the same campaign, replayed.
    let (s, again, replayed) = post(&app, "spring-1", body()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert!(replayed);
    assert_eq!(again["id"], first["id"]);
    // A different body under the same key is a conflict, and creates nothing.
    let mut other = body();
    other["content"]["title"] = json!("Twice?");
    let (s, _, _) = post(&app, "spring-1", other).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // No hint ever reached a dispatcher: the campaign is found in the store and completes.
    let id = first["id"].as_str().unwrap();
    let done = app.wait_completed(id, Duration::from_secs(20)).await;
    assert_eq!(done["progress"]["notifications_written"], 3);
    assert_eq!(campaign_count(&app).await, 1, "one key, one campaign");
    assert_eq!(inbox_rows(&app, id).await, (3, 3));
}

#[tokio::test]
async fn a_request_that_died_after_claiming_its_key_is_completed_by_the_retry_with_the_bound_id() {
    let app = spawn(Options::default()).await;
    // What a request killed right after its claim leaves behind: the key, bound to a campaign
    // id, without a response and without the campaign.
    let key = IdempotencyKey::new("crashed-1", &body()).unwrap();
    let bound = uuid::Uuid::now_v7().to_string();
    let claim = app
        .ctx
        .ports
        .campaigns
        .claim_idempotency_key(
            &key.key,
            &key.request_hash,
            &bound,
            chrono::Utc::now() + chrono::Duration::hours(24),
        )
        .await
        .unwrap();
    assert_eq!(claim, IdempotencyClaim::Claimed);

    // The retry is not blocked for 24 h: it creates the campaign the key was bound to.
    let (s, created, _) = post(&app, "crashed-1", body()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["id"], bound.as_str());
    let (s, replay, replayed) = post(&app, "crashed-1", body()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(replayed);
    assert_eq!(replay["id"], bound.as_str());
    app.wait_completed(&bound, Duration::from_secs(20)).await;
    assert_eq!(campaign_count(&app).await, 1);
    assert_eq!(inbox_rows(&app, &bound).await, (3, 3));
}

#[tokio::test]
async fn a_key_refused_with_an_invalid_body_is_free_for_the_corrected_request() {
    let app = spawn(Options::default()).await;
    let mut bad = body();
    bad["channels"] = json!([]);
    let (s, err, _) = post(&app, "fix-me", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(campaign_count(&app).await, 0, "bad input changes nothing");
    let (s, ok, replayed) = post(&app, "fix-me", body()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{ok}");
    assert!(!replayed);
    assert_eq!(campaign_count(&app).await, 1);
}
