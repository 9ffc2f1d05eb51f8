//! Brokers with users and TLS for the security tests (issue 16): a CA made by the test with
//! rcgen, a server certificate it signs, and three principals.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use broker_lite::client::{ClientError, ClientTls, Credentials, Security};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::protocol::ErrorReply;
use broker_lite::server::{Permissions, ServerTls, Users};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

pub const PASSWORD: &str = "correct horse battery staple";

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub server: ServerTls,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let server_cert = params.signed_by(&server_key, &issuer).unwrap();
        let server = ServerTls::from_pem(
            server_cert.pem().as_bytes(),
            server_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server,
        }
    }

    pub fn client(&self) -> ClientTls {
        ClientTls::from_ca_pem(self.ca_pem.as_bytes()).unwrap()
    }
}

fn rights(produce: &[&str], consume: &[&str], groups: &[&str], admin: bool) -> Permissions {
    let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    let mut p = Permissions::default();
    p.produce = names(produce);
    p.consume = names(consume);
    p.groups = names(groups);
    p.admin = admin;
    p
}

/// alice and carol produce and consume `orders` in group `billing`; bob only produces
/// `payments` and uses group `shipping`; root may do anything.
pub fn users() -> Users {
    let mut users = Users::new();
    users.add(
        "alice",
        PASSWORD.as_bytes(),
        rights(&["orders"], &["orders"], &["billing"], false),
    );
    users.add(
        "carol",
        PASSWORD.as_bytes(),
        rights(&["orders"], &["orders"], &["billing"], false),
    );
    users.add(
        "bob",
        PASSWORD.as_bytes(),
        rights(&["payments"], &["orders"], &["shipping"], false),
    );
    users.add("root", PASSWORD.as_bytes(), Permissions::all());
    users
}

pub struct Env {
    _dir: tempfile::TempDir,
    pub broker: EmbeddedBroker,
}

pub async fn start(tls: Option<ServerTls>) -> Env {
    start_with(|config| config.server.tls = tls).await
}

/// A broker with [`users`] and the changes `configure` makes to its configuration.
pub async fn start_with(configure: impl FnOnce(&mut EmbeddedConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    config.broker.background_tasks = false;
    config.server.users = Some(Arc::new(users()));
    configure(&mut config);
    let broker = embedded::start(dir.path(), config).await.unwrap();
    Env { _dir: dir, broker }
}

/// Two users who may produce, consume and use groups of any name, without admin rights.
pub fn unrestricted_users() -> Users {
    let mut users = Users::new();
    for name in ["alice", "bob"] {
        users.add(
            name,
            PASSWORD.as_bytes(),
            rights(&["*"], &["*"], &["*"], false),
        );
    }
    users.add("root", PASSWORD.as_bytes(), Permissions::all());
    users
}

pub fn as_user(user: &str) -> Security {
    Security::default().with_credentials(Credentials::new(user, PASSWORD))
}

/// The broker's refusal inside `error`, through retries.
pub fn refusal(error: &ClientError) -> &ErrorReply {
    match error {
        ClientError::Server(reply) => reply,
        ClientError::RetriesExhausted { last, .. } => refusal(last),
        other => panic!("expected the broker's refusal, got {other:?}"),
    }
}
