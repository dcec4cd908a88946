//! The network namespace the process runs in: its identity (state is per namespace), its
//! cookie, and the lock that serializes policyroute commands in it.
use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
};

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

pub(crate) fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
