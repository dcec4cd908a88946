//! The pseudo filesystems commands need and mount when missing (under `ip netns exec`
//! every command starts with a fresh /sys): bpffs for pins, cgroup2 for socket hooks.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::namespace;

const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The default pin directory of this namespace: /sys/fs/bpf/policyroute/net-<inode>.
pub fn default_pin_dir() -> io::Result<PathBuf> {
    Ok(Path::new(BPFFS_ROOT)
        .join("policyroute")
        .join(namespace::label()?))
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
