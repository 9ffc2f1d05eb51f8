//! TLS with a CA made by the test (issue 16).

mod security_support;

use broker_lite::client::{
    Admin, AdminConfig, ClientError, ClientTls, Producer, ProducerConfig, Security,
};
use broker_lite::protocol::{ErrorCode, Message};
use security_support::{Pki, as_user, refusal, start};

fn admin_config(security: Security) -> AdminConfig {
    let mut config = AdminConfig::default();
    config.security = security;
    config
}

#[tokio::test]
async fn clients_that_trust_the_ca_connect_and_authenticate_over_tls() {
    let pki = Pki::new();
    let env = start(Some(pki.server.clone())).await;
    let addr = env.broker.addr();
    // By IP address (the certificate names 127.0.0.1) and by host name.
    let by_ip = as_user("alice").with_tls(pki.client());
    let mut config = ProducerConfig::default();
    config.security = by_ip;
    let producer = Producer::connect(addr, config).await.unwrap();
    assert!(
        producer
            .send(Message::new("orders", "over tls"))
            .await
            .unwrap()
            .is_ok()
    );

    let by_name = as_user("root").with_tls(pki.client().with_server_name("localhost"));
    let admin = Admin::connect(addr, admin_config(by_name)).await.unwrap();
    let described = admin.describe().await.unwrap();
    assert!(described.tls && described.authentication, "{described:?}");
}

#[tokio::test]
async fn a_wrong_ca_or_a_wrong_name_fails_the_handshake() {
    let pki = Pki::new();
    let env = start(Some(pki.server.clone())).await;
    let stranger = Pki::new();
    for tls in [
        stranger.client(),
        pki.client().with_server_name("broker.example"),
    ] {
        let error = Admin::connect(
            env.broker.addr(),
            admin_config(as_user("root").with_tls(tls)),
        )
        .await
        .unwrap_err();
        match error {
            ClientError::Security { reason, .. } => {
                assert!(reason.starts_with("TLS handshake failed: "), "{reason}")
            }
            other => panic!("expected a TLS failure, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn plain_text_to_a_tls_port_and_tls_to_a_plain_port_fail_clearly() {
    let pki = Pki::new();
    let tls_env = start(Some(pki.server.clone())).await;
    // The connect itself fails (its opening ping is refused), not a request after it.
    let error = Admin::connect(tls_env.broker.addr(), admin_config(Security::default()))
        .await
        .unwrap_err();
    let reply = refusal(&error);
    assert_eq!(reply.code, ErrorCode::Unauthenticated);
    assert!(
        reply.message.starts_with("this broker requires TLS"),
        "{reply}"
    );

    let plain_env = start(None).await;
    let tls: ClientTls = pki.client();
    let error = Admin::connect(
        plain_env.broker.addr(),
        admin_config(as_user("root").with_tls(tls)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ClientError::Security { reason, .. } if reason.contains("TLS handshake failed")),
        "{error:?}"
    );
}
