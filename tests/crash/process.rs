//! The processes of the system under test: started, killed with SIGKILL and started again.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

/// A process of the system under test, restartable after a kill.
pub(crate) struct Process {
    name: &'static str,
    command: Box<dyn Fn() -> Command + Send>,
    child: Option<Child>,
    pub(crate) kills: usize,
}

impl Process {
    pub(crate) fn new(name: &'static str, command: impl Fn() -> Command + Send + 'static) -> Self {
        let mut process = Self {
            name,
            command: Box::new(command),
            child: None,
            kills: 0,
        };
        process.start();
        process
    }

    fn start(&mut self) {
        let child = (self.command)()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    pub(crate) fn kill_and_restart(&mut self) {
        self.kill();
        self.start();
    }

    /// SIGKILL, not restarted.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            self.kills += 1;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// This test binary started again in `role` (see `crash_role`), with `envs`.
pub(crate) fn role(
    name: &'static str,
    envs: Vec<(&'static str, String)>,
) -> impl Fn() -> Command + Send {
    move || {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["crash_role", "--exact", "--ignored", "--nocapture"])
            .env("CRASH_ROLE", name)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }
}

/// A port nothing listens on now, for a process the test starts.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
