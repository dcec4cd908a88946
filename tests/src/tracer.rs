//! A running `policyroute trace` in a namespace, its stdout collected line by line.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::{cli, netns::NetNs};

/// A running `policyroute trace`, its stdout collected line by line.
pub struct Tracer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(cli::bin())
            .arg("trace")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start trace");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped");
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Sends with `send` until `n` lines arrived (the trace needs a moment to set its
    /// filter, and nothing tells the test when it has).
    pub fn lines_while(&self, n: usize, mut send: impl FnMut()) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.lines.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "fewer than {n} trace lines");
            send();
        }
        self.lines.lock().unwrap().clone()
    }

    /// Ctrl-C, then its exit status and stderr.
    pub fn interrupt(mut self) -> (bool, String) {
        // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs the command).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.finish()
    }

    pub fn finish(&mut self) -> (bool, String) {
        let status = self.child.wait().expect("trace exits");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status.success(), err)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
