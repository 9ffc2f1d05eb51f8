//! Each MySQL test gets a database of its own, reachable by pool and by URL, gone afterwards.
#![cfg(feature = "mysql")]

use courier_test_support::MySqlTestDatabase;
use sqlx::Connection as _;

#[tokio::test]
async fn a_test_database_is_private_reachable_by_url_and_dropped_afterwards() {
    let first = MySqlTestDatabase::create().await;
    let second = MySqlTestDatabase::create().await;
    assert_ne!(first.name(), second.name());
    sqlx::query("CREATE TABLE t (id INT PRIMARY KEY)")
        .execute(first.pool())
        .await
        .unwrap();

    let mut by_url = sqlx::MySqlConnection::connect(&first.url()).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
        .fetch_one(&mut by_url)
        .await
        .unwrap();
    assert_eq!(tables, 0);
    by_url.close().await.unwrap();

    let name = first.name().to_owned();
    let pool = second.pool().clone();
    first.pool().close().await;
    drop(first);
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
    )
    .bind(&name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "{name} should be dropped with its guard");
}
