//! The network namespace the process runs in: its identity (state is per namespace), the
//! lock that serializes policyroute commands in it, and the bpffs directory for pins.
use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// Where per-namespace hint files live. /run is shared by `ip netns exec` children (only
/// /sys is remounted), so every command in one namespace sees the same file.
const HINT_DIR: &str = "/run/policyroute";
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Identifies the current network namespace: the inode of /proc/self/ns/net.
pub fn id() -> io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// `net-<inode>`: used in lock and pin paths.
pub fn label() -> io::Result<String> {
    Ok(format!("net-{}", id()?))
}

/// An exclusive lock on this namespace's policyroute state, released on drop. It is a
/// flock on the namespace's own nsfs file, which every process in the namespace opens as
/// the same inode: commands in one namespace serialize, other namespaces are independent,
/// and no lock file is left behind.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock, waiting for a concurrent command in the same namespace to finish.
    /// `on_wait` is called once if the lock is busy (to tell the operator why we wait).
    pub fn acquire(on_wait: impl FnOnce()) -> io::Result<Self> {
        let file = File::open("/proc/thread-self/ns/net")?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            on_wait();
            flock(&file, libc::LOCK_EX)?;
        }
        Ok(Self { _file: file })
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The default pin directory of this namespace: /sys/fs/bpf/policyroute/net-<inode>.
pub fn default_pin_dir() -> io::Result<PathBuf> {
    Ok(Path::new(BPFFS_ROOT).join("policyroute").join(label()?))
}

/// Makes sure `dir` lies on a bpf filesystem, mounting one at /sys/fs/bpf when that is
/// missing (under `ip netns exec` every command starts with a fresh /sys).
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if dir.starts_with(root) && !is_bpffs(root) {
        fs::create_dir_all(root)?;
        mount_fs(c"bpf", root)?;
    }
    fs::create_dir_all(dir)?;
    if !is_bpffs(dir) {
        return Err(io::Error::other(format!(
            "{} is not on a bpf filesystem",
            dir.display()
        )));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::BPF_FS_MAGIC }
}

/// Mounts a pseudo filesystem (`bpf`, `cgroup2`) at `at`.
fn mount_fs(fstype: &std::ffi::CStr, at: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the process has what loading eBPF and changing routing needs.
pub fn has_privileges() -> bool {
    // From linux/capability.h; libc has no capability numbers.
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let Some(eff) = effective_caps() else {
        return false;
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/thread-self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Where the cgroup v2 hierarchy is mounted. When no cgroup2 mount is visible and
/// /sys/fs/cgroup is an empty directory (under `ip netns exec`, /sys is a fresh sysfs), it is
/// mounted there: that mount lives in the command's private mount namespace and goes with
/// it. Anywhere else nothing is mounted (a host's /sys/fs/cgroup holding cgroup v1
/// hierarchies must never be covered) and the answer is `None`.
pub fn cgroup2_root() -> io::Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    if let Some(dir) = cgroup2_mount(&mounts) {
        return Ok(Some(dir));
    }
    let dir = Path::new("/sys/fs/cgroup");
    let empty = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    if !empty {
        return Ok(None);
    }
    mount_fs(c"cgroup2", dir)?;
    Ok(Some(dir.to_path_buf()))
}

/// The mount point of a cgroup2 filesystem in a mountinfo table.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The network namespace cookie (what socket hooks compare to act only on sockets of this
/// namespace).
pub fn netns_cookie() -> io::Result<u64> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, out pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

fn hints_file() -> io::Result<PathBuf> {
    Ok(Path::new(HINT_DIR).join(format!("{}.cgroups", label()?)))
}

/// Cgroups earlier applies in this namespace attached socket hooks to: where `status` and
/// `flush` look besides the root cgroup. Only a hint; what is attached is asked of the
/// kernel, and programs of other namespaces are told apart by their netns cookie.
pub fn cgroup_hints() -> Vec<String> {
    let Ok(path) = hints_file() else {
        return Vec::new();
    };
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn set_cgroup_hints(cgroups: &[String]) -> io::Result<()> {
    prune_dead_namespaces();
    let path = hints_file()?;
    if cgroups.is_empty() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => {
                // Leave nothing behind: the directory goes with the last namespace's file.
                let _ = fs::remove_dir(HINT_DIR);
                Ok(())
            }
        };
    }
    in_hint_dir(|| fs::write(&path, cgroups.join("\n")))
}

/// Runs `create` (which makes a file in [`HINT_DIR`]) after making the directory. Another
/// namespace's last command that leaves nothing there removes the directory when it finds
/// it empty, which it is between our mkdir and our create: then both go again.
fn in_hint_dir<T>(create: impl Fn() -> io::Result<T>) -> io::Result<T> {
    let mut attempts = 5;
    loop {
        fs::create_dir_all(HINT_DIR)?;
        match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts > 1 => attempts -= 1,
            other => return other,
        }
    }
}

/// Removes the files of namespaces that no longer exist (deleted while an apply had
/// hooks there, or a daemon was killed): nothing of them is left behind in /run. A
/// namespace lives while a process is in it or a file under /run/netns holds it.
fn prune_dead_namespaces() {
    let Ok(entries) = fs::read_dir(HINT_DIR) else {
        return;
    };
    let mut alive: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    let held = fs::read_dir("/run/netns").into_iter().flatten().flatten();
    let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
    for path in held
        .map(|e| e.path())
        .chain(pids.map(|e| e.path().join("ns/net")))
    {
        if let Ok(m) = fs::metadata(&path) {
            alive.insert(m.ino());
        }
    }
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ino = name
            .to_str()
            .and_then(|n| n.strip_prefix("net-"))
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u64>().ok());
        if ino.is_some_and(|ino| !alive.contains(&ino)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "30 23 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    31 23 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            super::cgroup2_mount(info),
            Some("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(
            super::cgroup2_mount("31 23 0:27 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }
}

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

/// `ipv4` / `ipv6`, as JSON output and metrics labels name a family.
pub fn family_name(f: crate::policy::matcher::Family) -> &'static str {
    match f {
        crate::policy::matcher::Family::V4 => "ipv4",
        crate::policy::matcher::Family::V6 => "ipv6",
    }
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
    Ok(Path::new(HINT_DIR).join(format!("{}.daemon", label()?)))
}

fn state_path(daemon: &Path) -> PathBuf {
    daemon.with_extension("state")
}

impl DaemonFile {
    pub fn claim(state: &DaemonState) -> Result<Self, ClaimError> {
        let path = daemon_path()?;
        let file = in_hint_dir(|| {
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
        let _ = fs::remove_dir(HINT_DIR);
    }
}
