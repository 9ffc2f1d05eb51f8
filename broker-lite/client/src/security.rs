//! Client-side security: credentials for the broker's SCRAM-SHA-256 authentication and TLS
//! (issue 16). Both are off by default, which suits a broker on loopback.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::error::{ClientError, Result};

fn config_error(reason: String) -> ClientError {
    ClientError::Security {
        addr: String::new(),
        reason,
    }
}

/// A user name and password. The password is never printed (`Debug` shows `***`) and never
/// sent: the client proves it knows it (SCRAM-SHA-256).
///
/// ```
/// use broker_lite_client::Credentials;
///
/// let c = Credentials::new("orders", "s3cret");
/// assert_eq!(c.user(), "orders");
/// assert!(!format!("{c:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: Arc<str>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

impl Credentials {
    /// `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl AsRef<str>) -> Self {
        Credentials {
            user: user.into(),
            password: Arc::from(password.as_ref()),
        }
    }

    /// `user` with the password in the file at `path` (one trailing newline is ignored).
    ///
    /// # Errors
    ///
    /// [`ClientError::Security`] when the file cannot be read or is empty.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let file = std::env::temp_dir().join("broker-lite-doc-password");
    /// std::fs::write(&file, "s3cret\n")?;
    /// let c = broker_lite_client::Credentials::from_file("orders", &file)?;
    /// assert_eq!(c.user(), "orders");
    /// # Ok(()) }
    /// ```
    pub fn from_file(user: impl Into<String>, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            config_error(format!(
                "cannot read the password file {}: {e}",
                path.display()
            ))
        })?;
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        if password.is_empty() {
            return Err(config_error(format!(
                "the password file {} is empty",
                path.display()
            )));
        }
        Ok(Credentials::new(user, password))
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub(crate) fn password(&self) -> &[u8] {
        self.password.as_bytes()
    }
}

/// TLS settings of a client: the CA to trust and, optionally, the name to check in the
/// broker's certificate (default: the host part of the address).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
/// let tls = broker_lite_client::ClientTls::from_ca_pem(ca.cert.pem().as_bytes())?
///     .with_server_name("localhost");
/// assert_eq!(tls.server_name(), Some("localhost"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    ///
    /// # Errors
    ///
    /// [`ClientError::Security`] when `pem` holds no usable certificate.
    pub fn from_ca_pem(pem: &[u8]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| config_error(format!("invalid CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| config_error(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(config_error(
                "no CA certificate found: give a PEM file with a CERTIFICATE block".into(),
            ));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Trusts the CA certificates in the PEM file at `path`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Security`] when the file cannot be read or holds no certificate.
    pub fn from_ca_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            config_error(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        ClientTls::from_ca_pem(&pem)
            .map_err(|e| config_error(format!("CA file {}: {e}", path.display())))
    }

    /// Checks `name` in the broker's certificate instead of the address's host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The name checked in the broker's certificate, when set.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }

    /// The name to verify for a connection to `addr` (`host:port`).
    pub(crate) fn name_for(&self, addr: &str) -> Result<ServerName<'static>> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(addr),
        };
        ServerName::try_from(host.to_string()).map_err(|e| ClientError::Security {
            addr: addr.to_string(),
            reason: format!(
                "{host:?} is not a valid TLS server name ({e}); set ClientTls::with_server_name"
            ),
        })
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// How a client connects: with credentials, TLS, both, or neither (the default, for a broker on
/// loopback that runs open).
///
/// ```
/// use broker_lite_client::{Credentials, Security};
///
/// let security = Security::default().with_credentials(Credentials::new("orders", "s3cret"));
/// assert!(security.credentials.is_some() && security.tls.is_none());
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Security {
    /// Authenticate with these.
    pub credentials: Option<Credentials>,
    /// Connect over TLS with these settings.
    pub tls: Option<ClientTls>,
}

impl Security {
    /// Adds credentials.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Adds TLS.
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Reads the settings from the environment: `BROKER_LITE_USER` with `BROKER_LITE_PASSWORD`
    /// or `BROKER_LITE_PASSWORD_FILE`, `BROKER_LITE_TLS_CA` (a PEM file) and
    /// `BROKER_LITE_TLS_SERVER_NAME`. Unset variables leave that part off.
    ///
    /// # Errors
    ///
    /// [`ClientError::Security`] for a user without a password (or the reverse), or an
    /// unreadable file.
    ///
    /// ```
    /// // With none of the variables set, security is off.
    /// let security = broker_lite_client::Security::from_env()?;
    /// # Ok::<(), broker_lite_client::ClientError>(())
    /// ```
    pub fn from_env() -> Result<Security> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut security = Security::default();
        let password = var("BROKER_LITE_PASSWORD");
        let password_file = var("BROKER_LITE_PASSWORD_FILE");
        match (var("BROKER_LITE_USER"), password, password_file) {
            (None, None, None) => {}
            (Some(user), Some(password), None) => {
                security.credentials = Some(Credentials::new(user, password));
            }
            (Some(user), None, Some(file)) => {
                security.credentials = Some(Credentials::from_file(user, file)?);
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(config_error(
                    "set BROKER_LITE_PASSWORD or BROKER_LITE_PASSWORD_FILE, not both".into(),
                ));
            }
            (Some(_), None, None) => {
                return Err(config_error(
                    "BROKER_LITE_USER is set without BROKER_LITE_PASSWORD or BROKER_LITE_PASSWORD_FILE".into(),
                ));
            }
            (None, _, _) => {
                return Err(config_error(
                    "a broker-lite password is set without BROKER_LITE_USER".into(),
                ));
            }
        }
        if let Some(ca) = var("BROKER_LITE_TLS_CA") {
            let mut tls = ClientTls::from_ca_file(ca)?;
            if let Some(name) = var("BROKER_LITE_TLS_SERVER_NAME") {
                tls = tls.with_server_name(name);
            }
            security.tls = Some(tls);
        }
        Ok(security)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("broker.internal:9876"), "broker.internal");
        assert_eq!(host_of("[::1]:9876"), "::1");
        assert_eq!(host_of("127.0.0.1:9876"), "127.0.0.1");
    }
}
