//! The controller: turns a policy file into kernel state (`apply`), shows it (`status`)
//! and removes it (`flush`). All state lives in the kernel: the classifier attached at tcx
//! ingress, its maps (with a record of the applied policy), and ip rules and routes tagged
//! with policyroute's routing protocol number.
pub mod apply;
pub mod flush;
pub mod plan;
pub mod record;
pub mod status;

use std::path::PathBuf;

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

/// What is attached now: every attachment of our classifier in this namespace, and the
/// dataplane to keep (the program attached to the most devices; others are stale).
struct Current {
    attached: Vec<Attached>,
    dataplane: Option<Dataplane>,
}

async fn current(nl: &Netlink) -> Result<Current, ControlError> {
    let links: Vec<(u32, String)> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let attached = attach::find(&links)?;
    let mut uses: std::collections::BTreeMap<u32, usize> = Default::default();
    for a in &attached {
        *uses.entry(a.program.id()).or_default() += 1;
    }
    let keep = uses
        .iter()
        .max_by_key(|(id, n)| (**n, **id))
        .map(|(id, _)| *id);
    let dataplane = match keep.and_then(|id| attached.iter().find(|a| a.program.id() == id)) {
        Some(a) => Some(Dataplane::open(&a.program)?),
        None => None,
    };
    Ok(Current {
        attached,
        dataplane,
    })
}

/// Test hook: `POLICYROUTE_CRASH_AFTER=<step>` aborts right after that step of an apply,
/// so tests can prove that the next apply repairs and flush removes a half-done apply.
fn crash_point(step: &str) {
    if std::env::var("POLICYROUTE_CRASH_AFTER").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

/// Pins the program and its maps under the pin directory, replacing older pins. An extra
/// for operators whose bpffs is shared (bpftool, other tools); state is never read back
/// from pins.
fn pin(dp: &Dataplane, opts: &Options) -> Result<(), ControlError> {
    let dir = opts.pin_dir()?;
    namespace::ensure_bpffs(&dir)
        .map_err(ControlError::io(format!("bpffs at {}", dir.display())))?;
    let replace = |name: &str| {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    };
    crate::bpfcall::obj_pin(dp.prog_fd(), &replace("program"))
        .map_err(ControlError::io("pinning the program"))?;
    for &id in &dp.map_ids {
        let map = aya::maps::MapData::from_id(id).map_err(DataplaneError::from)?;
        let info = map.info().map_err(DataplaneError::from)?;
        let name = info.name_as_str().unwrap_or("map").to_string();
        map.pin(replace(&name)).map_err(|e| ControlError::Io {
            what: format!("pinning map {name}"),
            source: std::io::Error::other(e),
        })?;
    }
    Ok(())
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
