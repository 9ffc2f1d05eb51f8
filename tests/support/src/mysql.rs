//! A fresh MySQL / MariaDB database per test, the way `#[sqlx::test]` gives one per Postgres test.
//!
//! `#[sqlx::test]` reads `DATABASE_URL` for every database kind, and that one points at Postgres,
//! so MySQL tests take their server from `MYSQL_URL` instead:
//!
//! 1. if `MYSQL_URL` is set, it is used as is (the user needs `CREATE` and `DROP` on databases);
//! 2. otherwise, if a Docker engine answers, a throwaway MariaDB is started with testcontainers;
//! 3. otherwise the test fails with a message that says what to set.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, MySqlConnection, MySqlPool};
use testcontainers_modules::mariadb::Mariadb;
use testcontainers_modules::testcontainers::Container;
use testcontainers_modules::testcontainers::runners::SyncRunner;

/// What to do when no MySQL server can be found.
pub const HOW_TO_SET_MYSQL_URL: &str = "\
these tests need MySQL 8 or MariaDB 10.6+: set MYSQL_URL, for example
    MYSQL_URL=mysql://root@127.0.0.1:3306/test cargo nextest run --workspace
(the user needs CREATE and DROP: each test creates a database of its own), or start a Docker engine
so that a throwaway MariaDB is started with testcontainers";

static CONTAINER: OnceLock<(Container<Mariadb>, String)> = OnceLock::new();

/// The server the MySQL tests use: `MYSQL_URL`, or a MariaDB container when Docker answers.
///
/// # Panics
///
/// With [`HOW_TO_SET_MYSQL_URL`] when neither is there.
pub fn mysql_url() -> String {
    if let Ok(url) = std::env::var("MYSQL_URL") {
        return url;
    }
    if !crate::docker_available() {
        panic!("MYSQL_URL is not set and no Docker engine was found\n{HOW_TO_SET_MYSQL_URL}");
    }
    let (_, url) = CONTAINER.get_or_init(|| {
        let container = Mariadb::default().start().unwrap_or_else(|error| {
            panic!("MYSQL_URL is not set and starting MariaDB in Docker failed: {error}")
        });
        let port = container
            .get_host_port_ipv4(3306)
            .expect("the MariaDB container has no mapped port");
        (container, format!("mysql://root@127.0.0.1:{port}/test"))
    });
    url.clone()
}

/// A database of its own for one test, on the server of [`mysql_url`], dropped with this value.
///
/// ```no_run
/// # async fn example() {
/// let db = courier_test_support::MySqlTestDatabase::create().await;
/// sqlx::query("CREATE TABLE t (id INT PRIMARY KEY)").execute(db.pool()).await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct MySqlTestDatabase {
    pool: MySqlPool,
    name: String,
    server: MySqlConnectOptions,
}

impl MySqlTestDatabase {
    /// Creates an empty database named after this process and a counter, and a pool on it.
    ///
    /// # Panics
    ///
    /// When no server is configured (see [`mysql_url`]) or it refuses the connection.
    pub async fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = mysql_url();
        let server: MySqlConnectOptions = url
            .parse()
            .unwrap_or_else(|error| panic!("MYSQL_URL {url:?} is not a mysql:// URL: {error}"));
        let server = server.disable_statement_logging();
        let name = format!(
            "courier_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = MySqlConnection::connect_with(&server)
            .await
            .unwrap_or_else(|error| {
                panic!("cannot connect to MYSQL_URL {url:?}: {error}\n{HOW_TO_SET_MYSQL_URL}")
            });
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|error| panic!("cannot create the test database {name}: {error}"));
        admin.close().await.ok();
        let pool = MySqlPoolOptions::new()
            .max_connections(16)
            .connect_with(server.clone().database(&name))
            .await
            .unwrap_or_else(|error| panic!("cannot open the test database {name}: {error}"));
        Self { pool, name, server }
    }

    /// The pool on this test's database.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of this test's database, for processes the test starts (the sidecar).
    pub fn url(&self) -> String {
        let url = mysql_url();
        let authority = url.find("://").map_or(0, |at| at + 3);
        let path = url[authority..]
            .find('/')
            .map_or(url.len(), |at| authority + at);
        let query = url[path..].find('?').map_or("", |at| &url[path + at..]);
        format!("{}/{}{query}", &url[..path], self.name)
    }
}

impl Drop for MySqlTestDatabase {
    /// Drops the database from a thread of its own: `Drop` cannot wait on the test's runtime.
    fn drop(&mut self) {
        let (name, server) = (self.name.clone(), self.server.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = MySqlConnection::connect_with(&server).await.ok()?;
                // The test's pool is still open here, and a connection returned with an open
                // transaction (sqlx sends its ROLLBACK only on the connection's next use) holds a
                // metadata lock that would make DROP DATABASE wait forever: end those sessions.
                let sessions: Vec<i64> = sqlx::query_scalar(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?",
                )
                .bind(&name)
                .fetch_all(&mut admin)
                .await
                .ok()?;
                for id in sessions {
                    let _ = sqlx::raw_sql(&format!("KILL CONNECTION {id}"))
                        .execute(&mut admin)
                        .await;
                }
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        });
        let _ = dropped.join();
    }
}
