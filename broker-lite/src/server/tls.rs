//! TLS on the listener (issue 16): rustls with the ring provider, certificate and key in PEM.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

/// The first byte of a TLS handshake record; a broker-lite frame starts with its length, whose
/// first byte is 0 for any frame under 16 MiB.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The server's certificate chain and key.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
/// let tls = broker_lite::server::ServerTls::from_pem(
///     cert.cert.pem().as_bytes(),
///     cert.signing_key.serialize_pem().as_bytes(),
/// )?;
/// assert!(format!("{tls:?}").starts_with("ServerTls"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

/// The TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(String);

impl ServerTls {
    /// From a PEM certificate chain (the server's certificate first) and a PEM private key.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when either holds nothing usable or they do not match.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("invalid certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError(
                "no certificate found: give a PEM file with a CERTIFICATE block".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| TlsError(format!("invalid private key: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError(format!(
                "certificate and key do not make a usable pair: {e}"
            ))
        })?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// From the PEM files at `cert_chain` and `key`.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when a file cannot be read or holds nothing usable.
    pub fn from_files(cert_chain: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
        };
        ServerTls::from_pem(&read(cert_chain)?, &read(key)?)
    }

    /// Whether the peer started a TLS handshake; `None` when it closed first.
    pub(super) async fn speaks_tls(stream: &TcpStream) -> Option<bool> {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(first[0] == TLS_HANDSHAKE_RECORD),
        }
    }

    pub(super) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}
