//! The FCM provider's HTTP/2 transport: TLS with ALPN h2 to an `https://` endpoint (trusting a
//! `ca_file` besides the public roots), and connections that survive the server going away (a
//! restarted FCM is reconnected to without restarting the gateway).

#[path = "support/dispatch.rs"]
mod support;

use herald_core::config::FcmConfig;
use herald_core::model::{Channel, Platform, Priority};
use herald_push::fakes::FakeFcm;
use herald_push::provider::{Dispatch, Outcome, Provider};
use herald_push::providers::fcm::FcmProvider;
use std::sync::Arc;
use std::time::Duration;

fn dispatch(token: &str) -> Dispatch {
    let envelope = Arc::new(support::envelope(Channel::Push, Priority::Normal));
    support::to(&envelope, support::device(Platform::Fcm, token), "b")
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

/// An FCM send endpoint over TLS (HTTP/2 by ALPN), signed by the test CA of `fixtures/`;
/// answers every send 200 and records the HTTP version it was spoken to in.
async fn tls_fcm() -> (u16, Arc<parking_lot::Mutex<Vec<hyper::Version>>>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{fixtures}/tls_localhost.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{fixtures}/tls_localhost.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let versions = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = versions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    seen.lock().push(req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(
                                br#"{"name":"projects/p/messages/1"}"#,
                            )),
                        ))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, versions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_is_spoken_to_over_tls_with_http2() {
    let dir = tempfile::tempdir().unwrap();
    // The fake FCM only hands out access tokens here; the sends go to the TLS endpoint.
    let oauth = FakeFcm::start().await.unwrap();
    let (port, versions) = tls_fcm().await;
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls_ca.pem");
    let config = FcmConfig {
        endpoint: format!("https://localhost:{port}"),
        credentials_file: Some(oauth.write_credentials(dir.path()).unwrap()),
        ca_file: Some(ca.into()),
        ..FcmConfig::default()
    };
    let provider = FcmProvider::new(&config).unwrap();
    let sends: Vec<Dispatch> = (0..10).map(|i| dispatch(&format!("ok-{i}"))).collect();
    assert_eq!(provider.send(&sends).await, vec![Outcome::Sent; 10]);
    assert_eq!(versions.lock().len(), 10);
    assert!(versions.lock().iter().all(|v| *v == hyper::Version::HTTP_2));

    // Without the test CA the same endpoint is not trusted: the sends are retried, not sent.
    let untrusted = FcmProvider::new(&FcmConfig {
        ca_file: None,
        ..config.clone()
    })
    .unwrap();
    match &untrusted.send(&sends[..1]).await[0] {
        Outcome::Retry { reason, .. } => assert!(reason.contains("TLS"), "{reason}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(versions.lock().len(), 10);
}

#[test]
fn a_ca_file_that_is_not_pem_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("ca.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let config = FcmConfig {
        endpoint: "https://localhost:1".into(),
        credentials_file: Some(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/fcm_service_account.json"
            )
            .into(),
        ),
        ca_file: Some(bogus),
        ..FcmConfig::default()
    };
    let err = FcmProvider::new(&config).unwrap_err();
    assert!(err.message.contains("push.fcm.ca_file"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_without_project_or_key_id_works_with_a_configured_project() {
    let dir = tempfile::tempdir().unwrap();
    let fcm = FakeFcm::start().await.unwrap();
    let mut account = herald_push::fakes::credentials(&fcm.endpoint());
    let fields = account.as_object_mut().unwrap();
    fields.remove("project_id");
    fields.remove("private_key_id");
    let path = dir.path().join("sa.json");
    std::fs::write(&path, account.to_string()).unwrap();
    let config = FcmConfig {
        endpoint: fcm.endpoint(),
        credentials_file: Some(path.clone()),
        project_id: Some("from-config".into()),
        ..FcmConfig::default()
    };
    let provider = FcmProvider::new(&config).unwrap();
    assert_eq!(
        provider.send(&[dispatch("ok-1")]).await,
        vec![Outcome::Sent]
    );
    // Without a project anywhere, the provider refuses to start, naming the setting.
    let err = FcmProvider::new(&FcmConfig {
        project_id: None,
        ..config
    })
    .unwrap_err();
    assert!(
        err.message.contains("push.fcm.project_id"),
        "{}",
        err.message
    );
}
