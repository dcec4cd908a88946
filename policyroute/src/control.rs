//! The controller: turns a policy file into kernel state (`apply`), shows it (`status`)
//! and removes it (`flush`). All state lives in the kernel: the classifier attached at tcx
//! ingress, its maps (with a record of the applied policy), and ip rules and routes tagged
//! with policyroute's routing protocol number.
pub mod apply;
pub mod explain;
pub mod flush;
pub mod plan;
pub mod record;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use crate::{
    attach::{self, AttachError, Attached},
    compile::CompileError,
    config::ConfigError,
    dataplane::{Dataplane, DataplaneError},
    namespace,
    netlink::{Netlink, NetlinkError},
    state::StateError,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("policyroute needs CAP_NET_ADMIN and CAP_BPF (run it as root)")]
    Privileges,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the dataplane gives mark {dataplane:#x} but the reference model {model:#x}: please report this")]
    Disagree { dataplane: u32, model: u32 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl ControlError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// Options every command shares.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where maps and the program are pinned (default: derived from the namespace).
    pub bpffs_dir: Option<PathBuf>,
    /// rt_tables file to resolve table names with (default: the system's files).
    pub rt_tables: Option<PathBuf>,
}

impl Options {
    fn pin_dir(&self) -> Result<PathBuf, ControlError> {
        match &self.bpffs_dir {
            Some(d) => Ok(d.clone()),
            None => namespace::default_pin_dir().map_err(ControlError::io("namespace id")),
        }
    }
}

fn require_privileges() -> Result<(), ControlError> {
    if namespace::has_privileges() {
        Ok(())
    } else {
        Err(ControlError::Privileges)
    }
}

fn lock() -> Result<namespace::Lock, ControlError> {
    namespace::Lock::acquire(|| {
        eprintln!("policyroute: another policyroute command is running in this namespace; waiting")
    })
    .map_err(ControlError::io("taking the namespace lock"))
}

/// What is attached now: every attachment of our programs in this namespace, and the
/// dataplane to keep (the one with the most attachments; others are stale).
struct Current {
    attached: Vec<Attached>,
    dataplane: Option<Dataplane>,
    /// Where the cgroup v2 hierarchy is mounted for this process, if anywhere.
    cgroup_root: Option<PathBuf>,
}

/// Finds our attachments: tcx hooks of every device, and the socket hooks of the root
/// cgroup, of `cgroups`, and of the cgroups earlier applies in this namespace used.
async fn current(nl: &Netlink, cgroups: &[String]) -> Result<Current, ControlError> {
    let links: Vec<(u32, String)> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let mut found = attach::find_tcx(&links)?;
    let cgroup_root = namespace::cgroup2_root().map_err(ControlError::io("finding cgroup2"))?;
    let mut candidates: BTreeSet<String> = cgroups.iter().cloned().collect();
    candidates.insert("/".into());
    candidates.extend(namespace::cgroup_hints());
    for cg in candidates.iter().filter(|_| cgroup_root.is_some()) {
        found.extend(attach::find_cgroup(
            cgroup_root.as_deref().expect("filtered"),
            cg,
        )?);
    }
    let cookie = namespace::netns_cookie().map_err(ControlError::io("netns cookie"))?;
    // One open dataplane per rules map, with the number of hooks its programs hold.
    let mut dataplanes: BTreeMap<u32, (usize, Dataplane)> = BTreeMap::new();
    let mut attached = Vec::new();
    for a in found {
        let dp = Dataplane::open(&a.program)?;
        // Socket hooks of other namespaces' policies may share a cgroup with ours.
        if matches!(a.hook, attach::Hook::Cgroup { .. }) && dp.maps.netns_cookie()? != cookie {
            continue;
        }
        dataplanes.entry(dp.rules_map_id).or_insert((0, dp)).0 += 1;
        attached.push(a);
    }
    let keep = dataplanes
        .iter()
        .max_by_key(|(id, (n, _))| (*n, **id))
        .map(|(id, _)| *id);
    let dataplane = keep.and_then(|id| dataplanes.remove(&id)).map(|(_, dp)| dp);
    Ok(Current {
        attached,
        dataplane,
        cgroup_root,
    })
}

/// Test hook: `POLICYROUTE_CRASH_AFTER=<step>` aborts right after that step of an apply,
/// so tests can prove that the next apply repairs and flush removes a half-done apply.
fn crash_point(step: &str) {
    if std::env::var("POLICYROUTE_CRASH_AFTER").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

/// Pins the maps (and the programs this process loaded) under the pin directory,
/// replacing older pins. Used to share the maps with a newly loaded program set, and an
/// extra for operators whose bpffs is shared (bpftool); state is never read from pins.
fn pin(dp: &Dataplane, opts: &Options) -> Result<PathBuf, ControlError> {
    let dir = opts.pin_dir()?;
    namespace::ensure_bpffs(&dir)
        .map_err(ControlError::io(format!("bpffs at {}", dir.display())))?;
    let replace = |name: &str| {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    };
    for name in crate::dataplane::PROGRAM_NAMES {
        if let Some(fd) = dp.program_fd(name) {
            crate::bpfcall::obj_pin(fd, &replace(name))
                .map_err(ControlError::io(format!("pinning program {name}")))?;
        }
    }
    for &id in &dp.map_ids {
        let map = aya::maps::MapData::from_id(id).map_err(DataplaneError::from)?;
        let info = map.info().map_err(DataplaneError::from)?;
        let name = info.name_as_str().unwrap_or("map").to_string();
        map.pin(replace(&name)).map_err(|e| ControlError::Io {
            what: format!("pinning map {name}"),
            source: std::io::Error::other(e),
        })?;
    }
    Ok(dir)
}

/// Removes the pin directory (nothing to do when it does not exist or bpffs is absent).
fn unpin(opts: &Options) -> Result<bool, ControlError> {
    let dir = opts.pin_dir()?;
    if !dir.exists() {
        return Ok(false);
    }
    for entry in std::fs::read_dir(&dir).map_err(ControlError::io("reading the pin directory"))? {
        let path = entry
            .map_err(ControlError::io("reading the pin directory"))?
            .path();
        std::fs::remove_file(&path)
            .map_err(ControlError::io(format!("unpinning {}", path.display())))?;
    }
    std::fs::remove_dir(&dir).map_err(ControlError::io("removing the pin directory"))?;
    Ok(true)
}
