//! Finds the Postgres that `#[sqlx::test]` needs, before any test runs.
//!
//! Put [`postgres_for_tests!`] once at the top of a test binary that uses `#[sqlx::test]`:
//!
//! 1. if `DATABASE_URL` is set, it is used as is;
//! 2. otherwise, if a Docker engine answers, a throwaway Postgres is started with testcontainers
//!    and `DATABASE_URL` points at it for this test process;
//! 3. otherwise the test binary stops with a message that says what to set.
//!
//! MySQL / MariaDB tests (feature `mysql`) take a database of their own from
//! [`MySqlTestDatabase::create`], on the server named by `MYSQL_URL`.
//!
//! End-to-end tests that run another package's binary (the `outbox-relay` sidecar, the
//! `broker-lite` server) find it with [`workspace_binary`]. Tests that count the requests an
//! embedded broker served read them from [`counters`], a counting metrics recorder.
//!
//! ```ignore
//! courier_test_support::postgres_for_tests!();
//!
//! #[sqlx::test]
//! async fn works(pool: sqlx::PgPool) { /* ... */ }
//! ```

mod binary;
mod counters;
#[cfg(feature = "mysql")]
mod mysql;

pub use binary::workspace_binary;
pub use counters::{Counters, counters};
#[cfg(feature = "mysql")]
pub use mysql::{HOW_TO_SET_MYSQL_URL, MySqlTestDatabase, mysql_url};

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::Container;
use testcontainers_modules::testcontainers::runners::SyncRunner;

#[doc(hidden)]
pub use ctor as __ctor;

/// What to do when no database can be found.
pub const HOW_TO_SET_DATABASE_URL: &str = "\
these tests need PostgreSQL: set DATABASE_URL, for example
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo nextest run --workspace
(the user needs CREATEDB: #[sqlx::test] creates a fresh database per test), or start a Docker engine
so that a throwaway Postgres is started with testcontainers";

/// Makes `DATABASE_URL` point at a Postgres before any test of this binary runs; see the crate docs.
#[macro_export]
macro_rules! postgres_for_tests {
    () => {
        #[allow(unsafe_code)] // a constructor runs before main by way of a linker section
        mod __courier_postgres_for_tests {
            #[$crate::__ctor::ctor(crate_path = $crate::__ctor)]
            fn find_postgres() {
                $crate::ensure_database_url();
            }
        }
    };
}

static CONTAINER: OnceLock<Container<Postgres>> = OnceLock::new();

/// Ensures `DATABASE_URL` is set, starting a container when it is not and Docker answers; exits
/// the process with [`HOW_TO_SET_DATABASE_URL`] otherwise. Called by [`postgres_for_tests!`].
pub fn ensure_database_url() {
    // Listing tests (nextest does it first) must work without a database.
    if std::env::var_os("DATABASE_URL").is_some() || std::env::args().any(|arg| arg == "--list") {
        return;
    }
    if !docker_available() {
        fail("DATABASE_URL is not set and no Docker engine was found");
    }
    let container = match Postgres::default().with_host_auth().start() {
        Ok(container) => container,
        Err(error) => fail(&format!(
            "DATABASE_URL is not set and starting Postgres in Docker failed: {error}"
        )),
    };
    let port = match container.get_host_port_ipv4(5432) {
        Ok(port) => port,
        Err(error) => fail(&format!(
            "the Postgres container has no mapped port: {error}"
        )),
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let _ = CONTAINER.set(container);
    // SAFETY: this runs in a constructor before main, when the process has a single thread, so
    // nothing can read the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("DATABASE_URL", url);
    }
}

pub(crate) fn docker_available() -> bool {
    if let Some(host) = std::env::var_os("DOCKER_HOST") {
        return !host.is_empty();
    }
    Path::new("/var/run/docker.sock").exists()
}

fn fail(reason: &str) -> ! {
    let _ = writeln!(
        std::io::stderr(),
        "error: {reason}\n{HOW_TO_SET_DATABASE_URL}"
    );
    std::process::exit(2);
}
