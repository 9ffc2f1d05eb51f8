//! Binaries of other workspace packages, for end-to-end tests.
//!
//! `env!("CARGO_BIN_EXE_…")` only names binaries of the test's own package, and the sidecar and the
//! broker are packages of their own so that their command-line dependencies stay out of the
//! libraries. A workspace test run (`cargo nextest run --workspace`) builds every package's
//! binaries into the same target directory as the test executables, so they are found next to them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The path of binary `name` of workspace package `package`, built for the profile of the running
/// test (`target/debug/<name>` next to `target/debug/deps/<test>`).
///
/// When the binary is not there (a test binary run on its own, e.g. `cargo nextest run -p courier
/// --test crash`), it is built once with `cargo build -p <package> --bin <name>`. A binary that is
/// there is used as is: after changing the sidecar or the broker, run the workspace's tests or
/// `cargo build -p <package>` so that an end-to-end test does not run a stale copy.
///
/// # Panics
///
/// When the binary cannot be built; the message has cargo's exit status and the command to run.
///
/// ```no_run
/// let relay = courier_test_support::workspace_binary("outbox-relay", "outbox-relay");
/// std::process::Command::new(relay).arg("--help").status().unwrap();
/// ```
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    static BUILDING: Mutex<()> = Mutex::new(());
    let path = profile_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let _one_build_at_a_time = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !path.exists() {
        build(name, package);
    }
    assert!(
        path.exists(),
        "`cargo build -p {package} --bin {name}` did not produce {}",
        path.display()
    );
    path
}

/// `target/<profile>`: the parent of the `deps` directory the test executable runs from.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let deps = exe.parent().expect("the test executable is in a directory");
    match deps.file_name() {
        Some(dir) if dir == "deps" => deps.parent().unwrap_or(deps).to_path_buf(),
        _ => deps.to_path_buf(),
    }
}

fn build(name: &str, package: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .expect("the profile directory is inside a target directory");
    let status = Command::new(cargo)
        .args(["build", "-p", package, "--bin", name])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|error| panic!("could not run cargo to build {name}: {error}"));
    assert!(
        status.success(),
        "`cargo build -p {package} --bin {name}` failed ({status}); run it by hand to see why"
    );
}
