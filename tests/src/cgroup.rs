//! A throwaway child cgroup (cgroup v2) for tests of the socket hooks: never the root.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Cgroup {
    /// Directory on this process's cgroup2 mount.
    pub dir: PathBuf,
    /// The cgroup's v2 path (`/prt-...`), as a policy's `local_cgroup` names it.
    pub path: String,
}

impl Cgroup {
    pub fn new(tag: &str) -> Self {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = info
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                right
                    .starts_with("cgroup2 ")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .expect("a cgroup2 mount");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("prt-{}-{n}-{tag}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).expect("create the test cgroup");
        Self {
            dir,
            path: format!("/{name}"),
        }
    }

    /// The `[attach]` keys that hook the sockets of this cgroup, and no others.
    pub fn attach_local(&self) -> String {
        format!("local = true\nlocal_cgroup = \"{}\"\n", self.path)
    }

    pub fn dir_arg(&self) -> &str {
        self.dir.to_str().expect("utf-8")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Probes run in it have exited (and been waited for) by now.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
