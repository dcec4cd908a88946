//! Attaching the classifier at tcx ingress and finding where it is attached. The kernel is
//! the source of truth: a later process (another `ip netns exec`) finds the dataplane by
//! querying each device's tcx chain for our program, then the program's maps by id.
use aya::programs::{tc::TcAttachType, ProgramError, ProgramInfo, SchedClassifier};

use crate::{bpfcall, object::CLASSIFIER_PROGRAM};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "querying tcx programs on {dev}: {source} (policyroute needs tcx, Linux 6.6 or newer)"
    )]
    Query { dev: String, source: ProgramError },
    #[error("attaching to {dev}: {source}")]
    Attach { dev: String, source: std::io::Error },
    #[error("detaching from {dev}: {source}")]
    Detach { dev: String, source: std::io::Error },
    #[error("opening program {id}: {source}")]
    Open { id: u32, source: ProgramError },
}

/// One of our programs attached at a device's tcx ingress.
pub struct Attached {
    pub dev: String,
    pub ifindex: u32,
    pub program: ProgramInfo,
}

/// Our classifier programs at the tcx ingress of the given devices (index, name).
pub fn find(links: &[(u32, String)]) -> Result<Vec<Attached>, AttachError> {
    let mut found = Vec::new();
    for (ifindex, dev) in links {
        let (_, programs) =
            SchedClassifier::query_tcx(dev, TcAttachType::Ingress).map_err(|source| {
                AttachError::Query {
                    dev: dev.clone(),
                    source,
                }
            })?;
        for program in programs {
            if program.name_as_str() == Some(CLASSIFIER_PROGRAM) {
                found.push(Attached {
                    dev: dev.clone(),
                    ifindex: *ifindex,
                    program,
                });
            }
        }
    }
    Ok(found)
}

/// Attaches the program behind `prog` at the end of `dev`'s tcx ingress chain.
pub fn attach(
    dev: &str,
    ifindex: u32,
    prog: std::os::fd::BorrowedFd<'_>,
) -> Result<(), AttachError> {
    bpfcall::tcx_attach(ifindex, prog, bpfcall::BPF_TCX_INGRESS).map_err(|source| {
        AttachError::Attach {
            dev: dev.to_string(),
            source,
        }
    })
}

/// Removes one attachment found by [`find`].
pub fn detach(a: &Attached) -> Result<(), AttachError> {
    let fd = a.program.fd().map_err(|source| AttachError::Open {
        id: a.program.id(),
        source,
    })?;
    use std::os::fd::AsFd;
    bpfcall::tcx_detach(a.ifindex, fd.as_fd(), bpfcall::BPF_TCX_INGRESS).map_err(|source| {
        AttachError::Detach {
            dev: a.dev.clone(),
            source,
        }
    })
}
