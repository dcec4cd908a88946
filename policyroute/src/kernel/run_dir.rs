//! /run/policyroute: the small files commands of one namespace share, named after it
//! (`net-<inode>.*`): the cgroups socket hooks went to, and the daemon's claim and state.
//! Nothing is left there once nothing needs it.
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::namespace::label;

/// /run is shared by `ip netns exec` children (only /sys is remounted), so every command in
/// one namespace sees the same files.
pub(crate) const RUN_DIR: &str = "/run/policyroute";

fn hints_file() -> io::Result<PathBuf> {
    Ok(Path::new(RUN_DIR).join(format!("{}.cgroups", label()?)))
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
                let _ = fs::remove_dir(RUN_DIR);
                Ok(())
            }
        };
    }
    in_run_dir(|| fs::write(&path, cgroups.join("\n")))
}

/// Runs `create` (which makes a file in [`RUN_DIR`]) after making the directory. Another
/// namespace's last command that leaves nothing there removes the directory when it finds
/// it empty, which it is between our mkdir and our create: then both go again.
pub(crate) fn in_run_dir<T>(create: impl Fn() -> io::Result<T>) -> io::Result<T> {
    let mut attempts = 5;
    loop {
        fs::create_dir_all(RUN_DIR)?;
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
    let Ok(entries) = fs::read_dir(RUN_DIR) else {
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
