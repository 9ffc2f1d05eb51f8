//! `outbox-relay migrate`: create or upgrade the outbox tables, and say what it did.

use std::collections::HashSet;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrate;

/// Runs the outbox migrations the database lacks and prints each one it applied, or that none
/// was needed.
pub(crate) async fn run(pool: &PgPool) -> anyhow::Result<()> {
    let migrator = &courier_outbox::MIGRATOR;
    let before = applied_versions(pool).await?;
    migrator.run(pool).await?;
    let applied: Vec<_> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !before.contains(&m.version))
        .collect();
    if applied.is_empty() {
        println!(
            "outbox tables are up to date: all {} migration(s) were already applied",
            before.len()
        );
    } else {
        for migration in &applied {
            println!("applied {} {}", migration.version, migration.description);
        }
        println!(
            "outbox tables created or upgraded: {} migration(s) applied",
            applied.len()
        );
    }
    Ok(())
}

/// The versions recorded in sqlx's migrations table (created, empty, if it is missing).
async fn applied_versions(pool: &PgPool) -> anyhow::Result<HashSet<i64>> {
    let mut connection = pool.acquire().await?;
    connection
        .ensure_migrations_table()
        .await
        .context("cannot create sqlx's migrations table")?;
    Ok(connection
        .list_applied_migrations()
        .await
        .context("cannot read sqlx's migrations table")?
        .into_iter()
        .map(|m| m.version)
        .collect())
}
