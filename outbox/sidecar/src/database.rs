//! Connecting to the application's database (Postgres, or MySQL / MariaDB), with errors that say
//! what to fix.

use anyhow::{Context, bail};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, MySqlConnection, MySqlPool, PgConnection, PgPool};

use crate::config::Config;

/// The application's database: the URL's scheme picks the store.
#[derive(Clone)]
pub(crate) enum Database {
    /// `postgres://` or `postgresql://`.
    Postgres(PgPool),
    /// `mysql://` or `mariadb://` (MySQL 8, MariaDB 10.6+).
    MySql(MySqlPool),
}

/// Runs `$body` with `$pool` bound to the pool of whichever database `$database` is; the body is
/// compiled once per store, so it may call the outbox's generic API.
macro_rules! with_pool {
    ($database:expr, |$pool:ident| $body:expr) => {
        match $database {
            $crate::database::Database::Postgres($pool) => $body,
            $crate::database::Database::MySql($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

const SCHEMES: &str = "postgres://, postgresql://, mysql:// or mariadb://";

/// Connects, failing fast with a clear message on a bad URL or an unreachable server.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<Database> {
    let url = config.database_url()?;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        connect_postgres(url).await.map(Database::Postgres)
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        connect_mysql(url).await.map(Database::MySql)
    } else {
        bail!(
            "the database URL {:?} is not a {SCHEMES} URL (for example \
             postgres://user@127.0.0.1:5432/app or mysql://user@127.0.0.1:3306/app)",
            redact(url)
        )
    }
}

async fn connect_postgres(url: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().with_context(|| {
        format!(
            "the database URL {:?} is not a valid postgres:// URL",
            redact(url)
        )
    })?;
    // One direct connection first: its error names the cause (refused, unknown host, bad
    // password), where a pool would only report a timeout.
    let probe = PgConnection::connect_with(&options)
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact(url)))?;
    probe.close().await.ok();
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact(url)))
}

async fn connect_mysql(url: &str) -> anyhow::Result<MySqlPool> {
    // sqlx reads both schemes alike; say which one the user wrote.
    let options: MySqlConnectOptions = url.parse().with_context(|| {
        format!(
            "the database URL {:?} is not a valid mysql:// or mariadb:// URL",
            redact(url)
        )
    })?;
    let probe = MySqlConnection::connect_with(&options)
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact(url)))?;
    probe.close().await.ok();
    MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to the database at {}", redact(url)))
}

/// Fails unless the outbox tables exist.
pub(crate) async fn ensure_migrated(database: &Database) -> anyhow::Result<()> {
    let migrated: bool = match database {
        Database::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT to_regclass('outbox.messages') IS NOT NULL AND to_regclass('outbox.failures') IS NOT NULL",
            )
            .fetch_one(pool)
            .await?
        }
        Database::MySql(pool) => {
            let tables: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables
                 WHERE table_schema = DATABASE()
                   AND table_name IN ('outbox_messages', 'outbox_failures', 'outbox_claim_turn')",
            )
            .fetch_one(pool)
            .await?;
            tables == 3
        }
    };
    if !migrated {
        bail!("the outbox tables are missing in this database: run `outbox-relay migrate` first");
    }
    Ok(())
}

/// The URL without its passwords, for messages: the one in the user info (`user:secret@`) and
/// any query parameter named like one (`?password=`, `&sslpassword=`). Works on malformed URLs
/// too, which is when it is most needed; when unsure it hides more rather than less.
pub(crate) fn redact(url: &str) -> String {
    redact_user_info(&redact_query(url))
}

/// Replaces the value of every `?…password…=` or `&…password…=` parameter with `***`.
fn redact_query(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find(['?', '&']) {
        let (before, param) = rest.split_at(at + 1);
        out.push_str(before);
        let end = param.find(['&', '#']).unwrap_or(param.len());
        let (this, after) = param.split_at(end);
        match this.split_once('=') {
            Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(this),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Replaces the password of `scheme://user:password@host` with `***`.
fn redact_user_info(url: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@`: a password may hold an unencoded one.
    let Some((userinfo, rest)) = after.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{rest}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn the_password_in_the_user_info_is_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact("postgres://app:p@ss:w0rd@db/orders"),
            "postgres://app:***@db/orders"
        );
        assert_eq!(
            redact("postgres://app@db/orders"),
            "postgres://app@db/orders"
        );
    }

    #[test]
    fn a_password_query_parameter_is_hidden() {
        assert_eq!(
            redact("postgres://app@db/orders?password=s3cret"),
            "postgres://app@db/orders?password=***"
        );
        assert_eq!(
            redact("postgres://db/orders?user=app&password=s3cret&sslmode=require"),
            "postgres://db/orders?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact("postgresql:///orders?host=/run/pg&sslpassword=k3y#frag"),
            "postgresql:///orders?host=/run/pg&sslpassword=***#frag"
        );
    }

    #[test]
    fn both_at_once_and_malformed_urls_leak_nothing() {
        for url in [
            "postgres://app:s3cret@db/orders?password=s3cret",
            "postgres://app:s3cret@db:notaport/orders?PASSWORD=s3cret",
            "postgres://app:s3cret@db/orders?application_name=me@home&password=s3cret",
            "mysql://root:s3cret@db/x?password=s3cret",
        ] {
            let redacted = redact(url);
            assert!(!redacted.contains("s3cret"), "{url} -> {redacted}");
        }
    }
}
