//! Connecting to the application's database, with errors that say what to fix.

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::Config;

/// Connects, failing fast with a clear message on a bad URL or an unreachable server.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let url = config.database_url()?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!(
            "the database URL {:?} is not a postgres:// URL (for example postgres://user@127.0.0.1:5432/app)",
            redact(url)
        );
    }
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

/// Fails unless the outbox tables exist.
pub(crate) async fn ensure_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let migrated: bool = sqlx::query_scalar(
        "SELECT to_regclass('outbox.messages') IS NOT NULL AND to_regclass('outbox.failures') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    if !migrated {
        bail!("the outbox tables are missing in this database: run `outbox-relay migrate` first");
    }
    Ok(())
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, rest)) = after.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{rest}"),
        None => url.to_owned(),
    }
}
