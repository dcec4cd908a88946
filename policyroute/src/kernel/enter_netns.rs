//! `-n NAME` / `--netns NAME`: run the command in the named network namespace, as
//! `ip -n NAME` and `ip netns exec NAME` do. Besides the network namespace, the process gets
//! a mount namespace of its own with a fresh /sys, as `ip netns exec` gives: /sys then shows
//! the namespace's devices, and a bpffs mounted for pins vanishes with the process instead
//! of being left behind in the caller's mounts.
use std::{ffi::CString, fs::File, io, os::fd::AsRawFd, path::Path};

/// Where `ip netns add` keeps named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Moves this process (it must have one thread yet) into network namespace `name`.
pub fn enter(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a namespace name"),
        ));
    }
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let ns = File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {name} ({}): {e}", path.display()),
        )
    })?;
    // SAFETY: setns and unshare take plain integers; ns is an open namespace file.
    unsafe {
        if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Nothing mounted from here on reaches the caller's mount namespace.
    mount(None, "/", None, libc::MS_SLAVE | libc::MS_REC)?;
    let sys = CString::new("/sys").expect("no NUL");
    // SAFETY: a valid NUL-terminated path; detaching is what `ip netns exec` does too.
    unsafe { libc::umount2(sys.as_ptr(), libc::MNT_DETACH) };
    mount(Some(name), "/sys", Some("sysfs"), 0)
}

fn mount(source: Option<&str>, target: &str, fstype: Option<&str>, flags: u64) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let source = source.map(c).transpose()?;
    let fstype = fstype.map(c).transpose()?;
    let target = c(target)?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
