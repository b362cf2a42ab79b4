//! The FCM provider's HTTP/2 connections survive the server going away: a restarted FCM is
//! reconnected to (and its new access token fetched) without restarting the gateway.

use herald_core::config::FcmConfig;
use herald_core::model::{Channel, Platform, Priority};
use herald_push::fakes::FakeFcm;
use herald_push::provider::{Destination, Dispatch, Envelope, Outcome, Provider};
use herald_push::providers::fcm::FcmProvider;
use std::sync::Arc;
use std::time::Duration;

fn dispatch(token: &str) -> Dispatch {
    Dispatch {
        envelope: Arc::new(Envelope {
            campaign_id: "c".into(),
            channel: Channel::Push,
            category: None,
            priority: Priority::Normal,
            expires_at: None,
        }),
        user_id: "u".into(),
        notification_id: uuid::Uuid::now_v7(),
        destination: Destination::Device {
            platform: Platform::Fcm,
            token: token.into(),
        },
        title: Some("t".into()),
        body: "b".into(),
        html: None,
        data: serde_json::json!({}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_fcm_is_reconnected_to_without_restarting_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let first = FakeFcm::start().await.unwrap();
    let addr = first.endpoint().trim_start_matches("http://").to_owned();
    let config = FcmConfig {
        endpoint: first.endpoint(),
        credentials_file: Some(first.write_credentials(dir.path()).unwrap()),
        h2c: true,
        connections: 2,
        ..FcmConfig::default()
    };
    let provider = FcmProvider::new(&config).unwrap();
    let sends: Vec<Dispatch> = (0..4).map(|i| dispatch(&format!("ok-{i}"))).collect();
    assert_eq!(provider.send(&sends).await, vec![Outcome::Sent; 4]);
    assert_eq!(first.sent(), 4);

    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = FakeFcm::start_on(&addr, true).await.unwrap();
    // A send caught on a dying connection may come back as a retry; the next ones go through
    // new connections (and a new access token: the new server knows none of the old ones).
    let mut delivered = false;
    for _ in 0..5 {
        let outcomes = provider.send(&[dispatch("ok-again")]).await;
        if outcomes == vec![Outcome::Sent] {
            delivered = true;
            break;
        }
        assert!(matches!(outcomes[0], Outcome::Retry { .. }), "{outcomes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered, "the restarted server was never reached");
    assert_eq!(second.requests_for("ok-again"), 1);
    assert_eq!(second.token_exchanges(), 1);
}
