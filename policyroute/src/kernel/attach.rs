//! The hooks the dataplane uses and how to find, attach and detach them. The kernel is the
//! source of truth: a later process (another `ip netns exec`) finds the dataplane by
//! querying each device's tcx chains or clsact filters and the policy's cgroup for our
//! programs, then the programs' maps by id.
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use aya::programs::{
    loaded_programs, tc::TcAttachType, ProgramError, ProgramInfo, SchedClassifier,
};
use policyroute_common::names::{CONNECT4, CONNECT6, SENDMSG4, SENDMSG6, TC_EGRESS, TC_INGRESS};

use crate::{
    kernel::{
        bpf_syscalls as bpf,
        tc_filters::{self, Direction, Filter},
    },
    plan::objects::Hook,
};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("querying tcx programs on {dev}: {source}")]
    Query { dev: String, source: ProgramError },
    #[error("{what} {hook}: {source}")]
    Io {
        what: &'static str,
        hook: String,
        source: std::io::Error,
    },
    #[error("opening program {id}: {source}")]
    Open { id: u32, source: ProgramError },
}

/// Socket hooks of the cgroup attachment, with their kernel attach types.
const SOCK_HOOKS: [(&str, u32); 4] = [
    (CONNECT4, bpf::BPF_CGROUP_INET4_CONNECT),
    (CONNECT6, bpf::BPF_CGROUP_INET6_CONNECT),
    (SENDMSG4, bpf::BPF_CGROUP_UDP4_SENDMSG),
    (SENDMSG6, bpf::BPF_CGROUP_UDP6_SENDMSG),
];

/// One of our programs found on a hook.
pub struct Attached {
    pub hook: Hook,
    pub program: ProgramInfo,
    /// Where a classic tc filter sits: what detaching it needs.
    pub filter: Option<Filter>,
}

impl Attached {
    /// `HOOK (program ID)`, as reports show it.
    pub fn describe(&self) -> String {
        format!("{} (program {})", self.hook.describe(), self.program.id())
    }
}

/// Whether this kernel has tcx (Linux 6.6+): querying a tcx hook fails (EINVAL) on older
/// ones. Every namespace has `lo`.
pub fn tcx_available() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}

/// Our programs on the device hooks of the given devices (index, name): tcx chains where
/// the kernel has tcx, and clsact filters always (an older release, or `mode = "tc"`, may
/// have left them).
pub fn find_devices(links: &[(u32, String)], tcx: bool) -> Result<Vec<Attached>, AttachError> {
    let mut found = if tcx { find_tcx(links)? } else { Vec::new() };
    found.extend(find_classic(links)?);
    Ok(found)
}

/// Our programs among the bpf filters of the given devices' clsact qdiscs.
fn find_classic(links: &[(u32, String)]) -> Result<Vec<Attached>, AttachError> {
    let mut found = Vec::new();
    for (ifindex, dev) in links {
        for dir in [Direction::Ingress, Direction::Egress] {
            let filters = tc_filters::filters(*ifindex, dir).map_err(|source| AttachError::Io {
                what: "listing tc filters of",
                hook: dev.clone(),
                source,
            })?;
            let ids: Vec<u32> = filters.iter().map(|f| f.program_id).collect();
            for program in by_ids(&ids)? {
                let (dev, ifindex) = (dev.clone(), *ifindex);
                let (hook, name) = match dir {
                    Direction::Ingress => (Hook::TcIngress { dev, ifindex }, TC_INGRESS),
                    Direction::Egress => (Hook::TcEgress { dev, ifindex }, TC_EGRESS),
                };
                if program.name_as_str() != Some(name) {
                    continue;
                }
                let filter = filters
                    .iter()
                    .find(|f| f.program_id == program.id())
                    .copied();
                found.push(Attached {
                    hook,
                    program,
                    filter,
                });
            }
        }
    }
    Ok(found)
}

/// Our programs on the tcx hooks of the given devices (index, name).
fn find_tcx(links: &[(u32, String)]) -> Result<Vec<Attached>, AttachError> {
    let mut found = Vec::new();
    for (ifindex, dev) in links {
        for (kind, name) in [
            (TcAttachType::Ingress, TC_INGRESS),
            (TcAttachType::Egress, TC_EGRESS),
        ] {
            let (_, programs) =
                SchedClassifier::query_tcx(dev, kind).map_err(|source| AttachError::Query {
                    dev: dev.clone(),
                    source,
                })?;
            for program in programs
                .into_iter()
                .filter(|p| p.name_as_str() == Some(name))
            {
                let (dev, ifindex) = (dev.clone(), *ifindex);
                let hook = match kind {
                    TcAttachType::Ingress => Hook::TcxIngress { dev, ifindex },
                    _ => Hook::TcxEgress { dev, ifindex },
                };
                found.push(Attached {
                    hook,
                    program,
                    filter: None,
                });
            }
        }
    }
    Ok(found)
}

/// Our programs on the socket hooks of a cgroup (`root` is a cgroup2 mount point).
pub fn find_cgroup(root: &Path, cgroup: &str) -> Result<Vec<Attached>, AttachError> {
    let Ok(dir) = File::open(root.join(cgroup.trim_start_matches('/'))) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for (name, attach_type) in SOCK_HOOKS {
        let ids =
            bpf::cgroup_query(dir.as_fd(), attach_type).map_err(|source| AttachError::Io {
                what: "querying",
                hook: format!("cgroup {cgroup}"),
                source,
            })?;
        for program in by_ids(&ids)?
            .into_iter()
            .filter(|p| p.name_as_str() == Some(name))
        {
            let hook = Hook::Cgroup {
                cgroup: cgroup.to_string(),
                program: name,
            };
            found.push(Attached {
                hook,
                program,
                filter: None,
            });
        }
    }
    Ok(found)
}

/// The programs with these ids, found by walking every loaded program (aya 0.14 opens
/// programs by id only that way). Another process may unload a program between the walk
/// finding its id and opening it, which fails that step: such failures are skipped, and
/// the walk is tried again while one of ours is still missing.
fn by_ids(ids: &[u32]) -> Result<Vec<ProgramInfo>, AttachError> {
    const WALKS: usize = 3;
    let mut last_error = None;
    for _ in 0..WALKS {
        last_error = None;
        let mut out = Vec::new();
        for p in loaded_programs() {
            match p {
                Ok(p) if ids.contains(&p.id()) => out.push(p),
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
        }
        if out.len() == ids.len() || last_error.is_none() {
            return Ok(out);
        }
    }
    Err(AttachError::Open {
        id: 0,
        source: last_error.expect("a walk failed"),
    })
}

fn attach_type(program: &str) -> u32 {
    SOCK_HOOKS
        .iter()
        .find(|(n, _)| *n == program)
        .map_or(0, |(_, t)| *t)
}

fn io(what: &'static str, hook: &Hook) -> impl FnOnce(std::io::Error) -> AttachError {
    let hook = hook.describe();
    move |source| AttachError::Io { what, hook, source }
}

fn open_cgroup(root: Option<&Path>, hook: &Hook, cgroup: &str) -> Result<File, AttachError> {
    let root = root.ok_or_else(|| {
        io("opening", hook)(std::io::Error::other("no cgroup v2 hierarchy is mounted"))
    })?;
    File::open(root.join(cgroup.trim_start_matches('/'))).map_err(io("opening", hook))
}

/// Attaches `prog` (the hook's program) at the end of the hook's chain.
pub fn attach(
    hook: &Hook,
    prog: BorrowedFd<'_>,
    cgroup_root: Option<&Path>,
) -> Result<(), AttachError> {
    match hook {
        Hook::TcxIngress { ifindex, .. } => bpf::tcx_attach(*ifindex, prog, bpf::BPF_TCX_INGRESS),
        Hook::TcxEgress { ifindex, .. } => bpf::tcx_attach(*ifindex, prog, bpf::BPF_TCX_EGRESS),
        Hook::TcIngress { ifindex, .. } => tc_filters::attach(
            *ifindex,
            Direction::Ingress,
            fd_number(prog),
            hook.program(),
        ),
        Hook::TcEgress { ifindex, .. } => {
            tc_filters::attach(*ifindex, Direction::Egress, fd_number(prog), hook.program())
        }
        Hook::Cgroup { cgroup, program } => {
            let dir = open_cgroup(cgroup_root, hook, cgroup)?;
            bpf::cgroup_attach(dir.as_fd(), prog, attach_type(program))
        }
    }
    .map_err(io("attaching to", hook))
}

/// Removes one attachment found by the `find_*` functions.
pub fn detach(a: &Attached, cgroup_root: Option<&Path>) -> Result<(), AttachError> {
    let fd = a.program.fd().map_err(|source| AttachError::Open {
        id: a.program.id(),
        source,
    })?;
    let prog = fd.as_fd();
    match &a.hook {
        Hook::TcxIngress { ifindex, .. } => bpf::tcx_detach(*ifindex, prog, bpf::BPF_TCX_INGRESS),
        Hook::TcxEgress { ifindex, .. } => bpf::tcx_detach(*ifindex, prog, bpf::BPF_TCX_EGRESS),
        Hook::TcIngress { ifindex, .. } => detach_filter(*ifindex, Direction::Ingress, a),
        Hook::TcEgress { ifindex, .. } => detach_filter(*ifindex, Direction::Egress, a),
        Hook::Cgroup { cgroup, program } => {
            let dir = open_cgroup(cgroup_root, &a.hook, cgroup)?;
            bpf::cgroup_detach(dir.as_fd(), prog, attach_type(program))
        }
    }
    .map_err(io("detaching from", &a.hook))
}

fn fd_number(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

/// Deletes the filter a classic attachment was found in. A filter already gone (another
/// process detached it meanwhile) is what detaching wanted.
fn detach_filter(ifindex: u32, dir: Direction, a: &Attached) -> std::io::Result<()> {
    let Some(filter) = &a.filter else {
        return Err(std::io::Error::other("no filter recorded for a tc hook"));
    };
    match tc_filters::detach(ifindex, dir, filter) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
