//! What a running `policyroute run` tells other commands of its namespace: its claim (at
//! most one daemon per namespace) and its state for `status`.
use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use super::{
    namespace::{flock, label},
    run_dir::{in_run_dir, RUN_DIR},
};

/// What `status` learns of a running `policyroute run`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    /// Unix time (s) it started.
    pub started: u64,
    /// Unix time (s) of its last completed reconcile.
    pub last_reconcile: Option<u64>,
    /// The last reconcile's error, if it failed.
    pub last_error: Option<String>,
    /// The gateways' health checks.
    #[serde(default)]
    pub checks: Vec<GatewayCheck>,
}

/// One gateway's health check for one family, as `status` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GatewayCheck {
    pub gateway: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    pub up: bool,
    /// Unix time (s) of its last change, or of the daemon's start.
    pub since: u64,
    /// Probes lost over the last 20 rounds.
    pub loss_percent: f64,
    pub rtt_ms: Option<f64>,
    pub transitions: u64,
}

/// `policyroute run`'s claim on this namespace: a flock on
/// /run/policyroute/net-<inode>.daemon. At most one daemon per namespace; the files go
/// when it exits (after a SIGKILL they stay, unlocked, and the next daemon takes them over).
///
/// The lock file holds the state as of the claim and is never rewritten, so a second
/// daemon can always name the holder. The changing state lives beside it in `.state`,
/// replaced by rename: rewriting the locked file in place let a reader catch it empty.
pub struct DaemonFile {
    _lock: File,
    path: PathBuf,
    state: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("another `policyroute run` (PID {0}) keeps this namespace")]
    Held(u32),
    #[error("the daemon file: {0}")]
    Io(#[from] io::Error),
}

fn daemon_path() -> io::Result<PathBuf> {
    Ok(Path::new(RUN_DIR).join(format!("{}.daemon", label()?)))
}

fn state_path(daemon: &Path) -> PathBuf {
    daemon.with_extension("state")
}

impl DaemonFile {
    pub fn claim(state: &DaemonState) -> Result<Self, ClaimError> {
        let path = daemon_path()?;
        let file = in_run_dir(|| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        })?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            let holder = read_state(&path).map_or(0, |s| s.pid);
            return Err(ClaimError::Held(holder));
        }
        write_json(&file, state)?;
        let mut claimed = Self {
            _lock: file,
            state: state_path(&path),
            path,
        };
        claimed.write(state)?;
        Ok(claimed)
    }

    /// Replaces the state readers see, atomically: write a temporary file, rename it.
    pub fn write(&mut self, state: &DaemonState) -> io::Result<()> {
        let tmp = self.state.with_extension("state.tmp");
        write_json(&File::create(&tmp)?, state)?;
        fs::rename(&tmp, &self.state)
    }

    /// The running daemon's state; `None` when no daemon holds the namespace.
    pub fn running() -> Option<DaemonState> {
        let path = daemon_path().ok()?;
        let file = File::open(&path).ok()?;
        // A lock we can take is nobody's: the file is a leftover of a killed daemon.
        if flock(&file, libc::LOCK_SH | libc::LOCK_NB).is_ok() {
            return None;
        }
        // Between the claim and its first state write only the lock file has the state.
        read_state(&state_path(&path))
            .or_else(|| read_state(&path))
            .or(Some(DaemonState::default()))
    }
}

fn write_json(mut file: &File, state: &DaemonState) -> io::Result<()> {
    use std::io::Write;
    file.set_len(0)?;
    file.write_all(&serde_json::to_vec(state).map_err(io::Error::other)?)
}

fn read_state(path: &Path) -> Option<DaemonState> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

impl Drop for DaemonFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.state);
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(RUN_DIR);
    }
}
