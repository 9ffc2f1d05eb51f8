//! `serve` settings: command-line flags over an optional TOML file, validated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use broker_lite::embedded::EmbeddedConfig;
use broker_lite::storage::FlushMode;
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// `flushDiskType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Flush {
    /// SYNC_FLUSH: answer after the fsync (group commit).
    Sync,
    /// ASYNC_FLUSH: answer from the page cache, fsync every interval.
    Async,
}

/// Every setting of `serve`. Flags win over the file given with `--config`; unset values take
/// the defaults. The file uses the same names with underscores, e.g.:
///
/// ```toml
/// listen = "0.0.0.0:9876"
/// data_dir = "/var/lib/broker-lite"
/// flush = "sync"
/// sync_flush_timeout_ms = 5000
/// retention_hours = 72
/// # Security (issue 16): TLS and users; passwords come from files or the environment only.
/// tls_cert = "/etc/broker-lite/cert.pem"
/// tls_key = "/etc/broker-lite/key.pem"
///
/// [[users]]
/// name = "orders-service"
/// password_file = "/run/secrets/orders-service"   # or password_env = "ORDERS_PASSWORD"
/// produce = ["orders"]
/// consume = ["orders"]
/// groups = ["billing-*"]
/// admin = false
/// ```
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Address to listen on [default: 127.0.0.1:9876].
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// Data directory (required, here or in the file).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Flush mode [default: sync].
    #[arg(long, value_enum)]
    pub(crate) flush: Option<Flush>,
    /// Async flush interval in milliseconds [default: 500].
    #[arg(long)]
    pub(crate) flush_interval_ms: Option<u64>,
    /// Sync flush timeout in milliseconds (then FLUSH_DISK_TIMEOUT) [default: 5000].
    #[arg(long)]
    pub(crate) sync_flush_timeout_ms: Option<u64>,
    /// Retention of old segments in hours (fileReservedTime) [default: 72].
    #[arg(long)]
    pub(crate) retention_hours: Option<u64>,
    /// Disk-usage ceiling of the segment files in bytes [default: none].
    #[arg(long)]
    pub(crate) max_disk_bytes: Option<u64>,
    /// Segment file size in bytes [default: 1 GiB].
    #[arg(long)]
    pub(crate) segment_bytes: Option<u64>,
    /// Largest message body in bytes [default: 4 MiB - 64 KiB].
    #[arg(long)]
    pub(crate) max_message_bytes: Option<u32>,
    /// Largest frame in bytes [default: 8 MiB].
    #[arg(long)]
    pub(crate) max_frame_bytes: Option<u32>,
    /// Most messages per batch send or pull [default: 1024].
    #[arg(long)]
    pub(crate) max_batch: Option<u32>,
    /// Most simultaneous connections [default: 1024].
    #[arg(long)]
    pub(crate) max_connections: Option<usize>,
    /// Grace period for requests in flight at shutdown, in milliseconds [default: 10000].
    #[arg(long)]
    pub(crate) shutdown_grace_ms: Option<u64>,
    /// PEM certificate chain: the listener speaks TLS only (needs --tls-key) [default: no TLS].
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Time for a new connection to finish TLS and authentication (or send its first
    /// request), in milliseconds [default: 10000].
    #[arg(long)]
    pub(crate) handshake_timeout_ms: Option<u64>,
    /// Most connections in their handshake at once; the longest waiting makes room [default: 256].
    #[arg(long)]
    pub(crate) max_handshaking: Option<usize>,
    /// Close a connection that sends nothing for this long, in milliseconds [default: 300000].
    #[arg(long)]
    pub(crate) idle_timeout_ms: Option<u64>,
    /// Most request and answer bytes held per connection [default: 256 MiB].
    #[arg(long)]
    pub(crate) max_bytes_in_flight: Option<usize>,
    /// Most topics one user (or, on an open broker, all clients together) may create
    /// [default: 10000].
    #[arg(long)]
    pub(crate) max_topics_per_principal: Option<usize>,
    /// Most consumer groups one user (or, on an open broker, all clients together) may create
    /// [default: 10000].
    #[arg(long)]
    pub(crate) max_groups_per_principal: Option<usize>,
    /// Most bytes of one dead-letter listing or key lookup answer; longer ones are paged
    /// [default: 4 MiB].
    #[arg(long)]
    pub(crate) max_response_bytes: Option<usize>,
    /// Replication role (issue 13): standalone, leader or follower [default: standalone].
    #[arg(long, value_enum)]
    pub(crate) role: Option<crate::role::RoleName>,
    /// A leader's acknowledgement mode (a follower's once promoted): sync (SYNC_MASTER) or async
    /// (ASYNC_MASTER) [default: sync].
    #[arg(long, value_enum)]
    pub(crate) replication: Option<crate::role::ReplicationName>,
    /// SYNC_MASTER: followers that must hold a message before SEND_OK [default: 1].
    #[arg(long)]
    pub(crate) min_sync_replicas: Option<u32>,
    /// SYNC_MASTER: how long a send waits for its followers (then FLUSH_SLAVE_TIMEOUT), and how
    /// long a silent or lagging follower stays in sync, in milliseconds [default: 3000].
    #[arg(long)]
    pub(crate) slave_timeout_ms: Option<u64>,
    /// A follower's leader, host:port.
    #[arg(long)]
    pub(crate) leader_address: Option<String>,
    /// A follower's name, unique among its leader's followers [default: the listen address].
    #[arg(long)]
    pub(crate) follower_name: Option<String>,
    /// A follower's user at the leader (it needs admin = true there).
    #[arg(long)]
    pub(crate) replication_user: Option<String>,
    /// The environment variable holding that user's password.
    #[arg(long)]
    pub(crate) replication_password_env: Option<String>,
    /// PEM CA certificate to check the leader's TLS certificate with (then TLS is used).
    #[arg(long)]
    pub(crate) replication_ca: Option<PathBuf>,
    /// A follower's record bytes per fetch from its leader [default: 4194304].
    #[arg(long)]
    pub(crate) replica_fetch_bytes: Option<u32>,
    /// Users (config file only): with any, every client must authenticate [default: none,
    /// the broker runs open, for loopback only].
    #[arg(skip)]
    pub(crate) users: Option<Vec<UserSettings>>,
}

/// One `[[users]]` entry. The password is read from `password_file` or the environment
/// variable `password_env`, never from the file itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserSettings {
    name: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default)]
    produce: Vec<String>,
    #[serde(default)]
    consume: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    admin: bool,
}

impl UserSettings {
    fn password(&self) -> Result<String> {
        let name = &self.name;
        match (&self.password_file, &self.password_env) {
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "user {name:?}: cannot read password_file {}",
                        path.display()
                    )
                })?;
                let password = text.trim_end_matches(['\n', '\r']).to_string();
                if password.is_empty() {
                    bail!("user {name:?}: password_file {} is empty", path.display());
                }
                Ok(password)
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(password) if !password.is_empty() => Ok(password),
                _ => bail!(
                    "user {name:?}: the environment variable {var} (password_env) is unset or empty"
                ),
            },
            _ => bail!("user {name:?}: give exactly one of password_file and password_env"),
        }
    }
}

macro_rules! merge {
    ($flags:ident, $file:ident, $($field:ident),*) => {
        Settings { $($field: $flags.$field.or($file.$field)),* }
    };
}

impl Settings {
    /// Reads `path` as TOML.
    pub(crate) fn from_file(path: &std::path::Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// `self` (flags) over `file`.
    pub(crate) fn over(self, file: Settings) -> Settings {
        let flags = self;
        merge!(
            flags,
            file,
            listen,
            data_dir,
            flush,
            flush_interval_ms,
            sync_flush_timeout_ms,
            retention_hours,
            max_disk_bytes,
            segment_bytes,
            max_message_bytes,
            max_frame_bytes,
            max_batch,
            max_connections,
            shutdown_grace_ms,
            tls_cert,
            tls_key,
            handshake_timeout_ms,
            max_handshaking,
            idle_timeout_ms,
            max_bytes_in_flight,
            max_topics_per_principal,
            max_groups_per_principal,
            max_response_bytes,
            role,
            replication,
            min_sync_replicas,
            slave_timeout_ms,
            leader_address,
            follower_name,
            replication_user,
            replication_password_env,
            replication_ca,
            replica_fetch_bytes,
            users
        )
    }

    /// Checks the values and builds the data directory and embedded configuration.
    pub(crate) fn build(self) -> Result<(PathBuf, EmbeddedConfig)> {
        let mut config = EmbeddedConfig::default();
        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:9876");
        config.listen = listen
            .parse::<SocketAddr>()
            .with_context(|| format!("listen address {listen:?} is not an ip:port"))?;
        let Some(data_dir) = self.data_dir.clone() else {
            bail!("no data directory: pass --data-dir or set data_dir in the config file");
        };
        let store = &mut config.broker.store;
        store.flush_mode = match self.flush.unwrap_or(Flush::Sync) {
            Flush::Sync => FlushMode::Sync,
            Flush::Async => {
                let ms = self.flush_interval_ms.unwrap_or(500);
                if ms == 0 {
                    bail!("flush_interval_ms must be greater than zero");
                }
                FlushMode::Async {
                    interval: Duration::from_millis(ms),
                }
            }
        };
        if let Some(ms) = self.sync_flush_timeout_ms {
            if ms == 0 {
                bail!("sync_flush_timeout_ms must be greater than zero");
            }
            store.sync_flush_timeout = Duration::from_millis(ms);
        }
        if let Some(hours) = self.retention_hours {
            if hours == 0 {
                bail!("retention_hours must be at least 1");
            }
            store.file_reserved_time = Duration::from_secs(hours * 3600);
        }
        if let Some(bytes) = self.max_disk_bytes {
            store.max_disk_usage = Some(bytes);
        }
        if let Some(bytes) = self.segment_bytes {
            store.segment_size = bytes;
        }
        let limits = &mut config.server.limits;
        if let Some(bytes) = self.max_frame_bytes {
            if bytes < 4096 {
                bail!("max_frame_bytes must be at least 4096");
            }
            limits.max_frame_size = bytes;
        }
        let message = self.max_message_bytes.unwrap_or(
            limits.max_body_size.min(
                (config.broker.max_message_size)
                    .try_into()
                    .unwrap_or(u32::MAX),
            ),
        );
        if message == 0 || u64::from(message) + 64 * 1024 > u64::from(limits.max_frame_size) {
            bail!(
                "max_message_bytes ({message}) must be at least 1 and leave 64 KiB of the frame size ({}) for headers",
                limits.max_frame_size
            );
        }
        limits.max_body_size = message;
        config.broker.max_message_size = message as usize;
        config.broker.store.max_record_size =
            config.broker.store.max_record_size.max(message + 64 * 1024);
        // Checked here so the error names the flag; the store would refuse it as `segment_size`.
        let smallest_segment = u64::from(config.broker.store.max_record_size) + 8;
        if config.broker.store.segment_size < smallest_segment {
            bail!(
                "--segment-bytes (segment_bytes) is {} bytes, but a segment must hold the largest \
                 record: give at least {smallest_segment} (the largest message, {message} bytes, \
                 plus 64 KiB of headers and 8 bytes), or lower --max-message-bytes",
                config.broker.store.segment_size
            );
        }
        if let Some(batch) = self.max_batch {
            if batch == 0 || batch > 65_536 {
                bail!("max_batch must be 1 to 65536");
            }
            limits.max_batch = batch;
            config.broker.max_pull_batch = batch as usize;
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                bail!("max_connections must be at least 1");
            }
            config.server.max_connections = n;
        }
        if let Some(ms) = self.shutdown_grace_ms {
            config.server.shutdown_grace = Duration::from_millis(ms);
        }
        self.security(&mut config.server)?;
        // Its error says "invalid broker configuration" itself.
        config.broker.validate()?;
        Ok((data_dir, config))
    }
}

impl Settings {
    /// TLS, users and connection bounds.
    fn security(&self, server: &mut broker_lite::server::ServerConfig) -> Result<()> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            server.tls = Some(broker_lite::server::ServerTls::from_files(cert, key)?);
        } else if self.tls_cert.is_some() || self.tls_key.is_some() {
            bail!("tls_cert and tls_key go together: give both or neither");
        }
        if let Some(users) = &self.users {
            let mut table = broker_lite::server::Users::new();
            for user in users {
                if user.name.is_empty() || user.name.len() > 255 {
                    bail!("user names must be 1 to 255 bytes long: {:?}", user.name);
                }
                let mut rights = broker_lite::server::Permissions::default();
                rights.produce = user.produce.clone();
                rights.consume = user.consume.clone();
                rights.groups = user.groups.clone();
                rights.admin = user.admin;
                table.add(user.name.clone(), user.password()?.as_bytes(), rights);
            }
            if table.len() != users.len() {
                bail!("a user name appears twice in [[users]]");
            }
            if !table.is_empty() {
                server.users = Some(std::sync::Arc::new(table));
            }
        }
        let positive = |name: &str, ms: Option<u64>| -> Result<Option<Duration>> {
            match ms {
                Some(0) => bail!("{name} must be greater than zero"),
                other => Ok(other.map(Duration::from_millis)),
            }
        };
        if let Some(d) = positive("handshake_timeout_ms", self.handshake_timeout_ms)? {
            server.handshake_timeout = d;
        }
        if let Some(d) = positive("idle_timeout_ms", self.idle_timeout_ms)? {
            server.idle_timeout = d;
        }
        if let Some(n) = self.max_handshaking {
            if n == 0 {
                bail!("max_handshaking must be at least 1");
            }
            server.max_handshaking = n;
        }
        if let Some(bytes) = self.max_bytes_in_flight {
            server.max_bytes_in_flight_per_connection = bytes;
        }
        for (name, value, field) in [
            (
                "max_response_bytes",
                self.max_response_bytes,
                &mut server.max_response_bytes,
            ),
            (
                "max_topics_per_principal",
                self.max_topics_per_principal,
                &mut server.max_topics_per_principal,
            ),
            (
                "max_groups_per_principal",
                self.max_groups_per_principal,
                &mut server.max_groups_per_principal,
            ),
        ] {
            match value {
                Some(0) => bail!("{name} must be at least 1"),
                Some(n) => *field = n,
                None => {}
            }
        }
        let frame = server.limits.max_frame_size as usize;
        if server.max_bytes_in_flight_per_connection < 2 * frame {
            bail!(
                "max_bytes_in_flight ({}) must be at least twice the frame size ({frame}): one pull's answer and one request",
                server.max_bytes_in_flight_per_connection
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_dir() -> Settings {
        Settings {
            data_dir: Some("/tmp/x".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn a_segment_too_small_for_a_record_names_the_flag_once() {
        let settings = Settings {
            segment_bytes: Some(1000),
            ..with_dir()
        };
        let error = format!("{:#}", settings.build().unwrap_err());
        assert!(
            error.starts_with("--segment-bytes (segment_bytes) is 1000 bytes, but a segment must hold the largest record: give at least "),
            "{error}"
        );
        assert!(!error.contains("invalid broker configuration"), "{error}");
    }

    #[test]
    fn users_read_their_passwords_from_files_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let text = format!(
            "data_dir = \"/a\"\n[[users]]\nname = \"orders\"\npassword_file = {:?}\nproduce = [\"orders\"]\n",
            file.display().to_string()
        );
        let settings: Settings = toml::from_str(&text).unwrap();
        assert!(
            !format!("{settings:?}").contains("s3cret"),
            "secrets are never printed"
        );
        let (_, config) = Settings::default().over(settings).build().unwrap();
        assert_eq!(config.server.users.as_ref().map(|u| u.len()), Some(1));

        let bad: Settings = toml::from_str(
            "data_dir = \"/a\"\n[[users]]\nname = \"x\"\npassword_env = \"BROKER_LITE_TEST_UNSET_VAR\"\n",
        )
        .unwrap();
        let error = format!("{:#}", bad.build().unwrap_err());
        assert!(
            error.contains("BROKER_LITE_TEST_UNSET_VAR (password_env) is unset"),
            "{error}"
        );
        assert!(
            toml::from_str::<Settings>("[[users]]\nname = \"x\"\npassword = \"inline\"\n").is_err(),
            "a password in the file itself is refused"
        );
    }

    #[test]
    fn per_principal_topic_and_group_limits_come_from_the_file_or_the_flags() {
        let file: Settings = toml::from_str(
            "data_dir = \"/a\"\nmax_topics_per_principal = 50\nmax_groups_per_principal = 20\nmax_response_bytes = 65536\n",
        )
        .unwrap();
        let flags = Settings {
            max_groups_per_principal: Some(5),
            ..Settings::default()
        };
        let (_, config) = flags.over(file).build().unwrap();
        assert_eq!(config.server.max_topics_per_principal, 50);
        assert_eq!(config.server.max_groups_per_principal, 5);
        assert_eq!(config.server.max_response_bytes, 65536);
        let zero = Settings {
            max_topics_per_principal: Some(0),
            ..with_dir()
        };
        let error = format!("{:#}", zero.build().unwrap_err());
        assert!(
            error.contains("max_topics_per_principal must be at least 1"),
            "{error}"
        );
    }

    #[test]
    fn defaults_are_valid_with_a_data_dir() {
        let (dir, config) = with_dir().build().unwrap();
        assert_eq!(dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.listen.port(), 9876);
        assert_eq!(config.broker.store.flush_mode, FlushMode::Sync);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: Settings =
            toml::from_str("data_dir = \"/a\"\nflush = \"async\"\nflush_interval_ms = 200\n")
                .unwrap();
        let flags = Settings {
            data_dir: Some("/b".into()),
            ..Settings::default()
        };
        let (dir, config) = flags.over(file).build().unwrap();
        assert_eq!(dir, PathBuf::from("/b"));
        assert_eq!(
            config.broker.store.flush_mode,
            FlushMode::Async {
                interval: Duration::from_millis(200)
            }
        );
    }

    #[test]
    fn invalid_values_are_refused_with_clear_errors() {
        let err = Settings::default().build().unwrap_err();
        assert!(err.to_string().contains("no data directory"), "{err}");
        let mut s = with_dir();
        s.listen = Some("nowhere".into());
        assert!(format!("{:#}", s.build().unwrap_err()).contains("not an ip:port"));
        let mut s = with_dir();
        s.flush = Some(Flush::Async);
        s.flush_interval_ms = Some(0);
        assert!(
            s.build()
                .unwrap_err()
                .to_string()
                .contains("flush_interval_ms")
        );
        let mut s = with_dir();
        s.max_message_bytes = Some(9 << 20);
        assert!(
            s.build()
                .unwrap_err()
                .to_string()
                .contains("max_message_bytes")
        );
        assert!(
            toml::from_str::<Settings>("colour = \"blue\"").is_err(),
            "unknown keys are refused"
        );
    }
}
