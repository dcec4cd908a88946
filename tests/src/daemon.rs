//! `policyroute run` as operators start it (`ip netns exec NS policyroute run -c FILE`), its
//! log in a file, stopped with SIGTERM on drop (SIGKILL if it does not exit).
use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{cli, netns::NetNs};

pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `policyroute run -c config ARGS` in `ns` with extra environment variables.
    pub fn start(ns: &NetNs, config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("prt-{}-{n}-run.log", std::process::id()));
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(cli::bin())
            .args(["run", "-c", config])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start policyroute run");
        Self {
            child: Some(child),
            log,
        }
    }

    /// The daemon's PID (`ip netns exec` execs it in place).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has `needle` `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        within(timeout, || self.log_text().matches(needle).count() >= count).is_some()
    }

    /// Sends SIGHUP and asserts the log says `needle` for the `count`th time within
    /// `timeout` (showing the log if not).
    pub fn reload(&self, needle: &str, count: usize, timeout: Duration) {
        self.signal(libc::SIGHUP);
        assert!(
            self.wait_log(needle, count, timeout),
            "no {needle:?} after SIGHUP:\n{}",
            self.log_text()
        );
    }

    /// Waits for the first apply to be in force (not longer once the process exited).
    pub fn ready(&self) {
        let ready = within(Duration::from_secs(20), || {
            self.log_text().contains("in force") || self.exited()
        });
        assert!(
            ready.is_some() && self.log_text().contains("in force"),
            "policyroute run did not get ready:\n{}",
            self.log_text()
        );
    }

    /// The process has exited (a zombie until reaped: it is our child).
    pub fn exited(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        // The state follows the command name, which is in parentheses.
        stat.map_or(true, |s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit; its status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Polls `done` every 10 ms until it holds (the time it took) or `timeout` passes.
pub fn within(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
