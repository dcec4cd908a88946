//! Everything that talks to the kernel: the eBPF objects and their maps, the hooks they
//! attach to, rtnetlink, the namespace, and the observation the planner works from.
//! Only this module makes syscalls.
pub mod attach;
pub mod bpf_syscalls;
pub mod daemon_file;
pub mod dataplane;
pub mod enter_netns;
pub mod events;
pub mod features;
pub mod maps;
pub mod mounts;
pub mod namespace;
pub mod netlink;
pub mod objects;
pub mod observe;
pub mod pins;
pub mod privileges;
pub mod record_store;
pub mod run_dir;
pub mod tc_filters;
pub mod testrun;
pub mod trie_map;

use attach::AttachError;
use dataplane::DataplaneError;
use netlink::NetlinkError;
use record_store::RecordError;

/// A failure of a kernel operation, named by what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Feature(#[from] features::MissingFeature),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl KernelError {
    /// Wraps an io error with what was being done (`map_err(KernelError::io("..."))`).
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
