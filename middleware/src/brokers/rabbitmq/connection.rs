//! One AMQP connection, opened on first use and opened again on the next use after it broke.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};

use super::RabbitMqError;

/// How long opening a connection may take before it counts as a failure: 10 s.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily opened, self-healing connection shared by every clone of a publisher or a source.
pub(crate) struct Reconnecting {
    uri: String,
    properties: ConnectionProperties,
    current: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting")
            .field("address", &redacted(&self.uri))
            .finish_non_exhaustive()
    }
}

impl Reconnecting {
    pub(crate) fn new(uri: impl Into<String>, properties: ConnectionProperties) -> Self {
        Self {
            uri: uri.into(),
            properties,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The broker address without credentials, for messages.
    pub(crate) fn address(&self) -> String {
        redacted(&self.uri)
    }

    /// The open connection, or a new one if there is none or it broke. Concurrent callers wait
    /// for the same reconnection instead of each opening one.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, RabbitMqError> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            if connection.status().connected() {
                return Ok(connection.clone());
            }
            tracing::info!(address = %self.address(), "RabbitMQ connection lost; reconnecting");
        }
        *current = None;
        let connect = Connection::connect(&self.uri, self.properties.clone());
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(connection)) => Arc::new(connection),
            Ok(Err(source)) => {
                return Err(RabbitMqError::Connect {
                    address: self.address(),
                    source,
                });
            }
            Err(_) => {
                return Err(RabbitMqError::Connect {
                    address: self.address(),
                    source: lapin::Error::IOError(Arc::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no AMQP handshake within {CONNECT_TIMEOUT:?}"),
                    ))),
                });
            }
        };
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// A new channel on the current connection.
    pub(crate) async fn channel(&self) -> Result<Channel, RabbitMqError> {
        let connection = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|source| RabbitMqError::operation("opening a channel")(source))?;
        Ok(channel)
    }

    /// A new channel in publisher-confirm mode.
    pub(crate) async fn confirm_channel(&self) -> Result<Channel, RabbitMqError> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(RabbitMqError::operation("enabling publisher confirms"))?;
        Ok(channel)
    }

    /// Closes the current connection, if any (the next use opens a new one).
    pub(crate) async fn close(&self) {
        if let Some(connection) = self.current.lock().await.take() {
            let _ = connection.close(200, "closed by courier").await;
        }
    }
}

/// `amqp://user:password@host:5672/vhost` as `amqp://host:5672/vhost`.
fn redacted(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(
            super::redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(super::redacted("amqp://localhost"), "amqp://localhost");
    }
}
