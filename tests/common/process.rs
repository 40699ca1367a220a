//! Other programs a test runs as its children (Redis, the rate-limit service, Prometheus): their
//! output in a log file, killed on drop, the log printed when the test fails.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;

/// A child process of the test; stdout and stderr go to `log`.
pub struct Process {
    pub child: Child,
    what: &'static str,
    pub log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- {} log ----\n{}",
                self.what,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Starts `cmd` as `what`, its output in `<dir>/<what>.log`.
pub fn spawn_logged(what: &'static str, dir: &Path, cmd: &mut Command) -> Process {
    let log = dir.join(format!("{what}.log"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap_or_else(|e| panic!("{what} ({:?}): {e}", cmd.get_program()));
    Process { child, what, log }
}

/// A port nobody listens on now, for programs that take a listen address rather than port 0.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
