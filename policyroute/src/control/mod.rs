//! Orchestration: each command strings the stages together (apply: load → observe → plan →
//! execute; status; explain; flush). Decisions live in `plan`, kernel work in `kernel`,
//! text in `present`.
pub mod apply;
pub mod drift;
pub mod execute;
pub mod explain;
pub mod failover;
pub mod flush;
pub mod metrics;
pub mod question;
pub mod run;
pub mod status;
pub mod timings;
pub mod trace;
pub mod trace_line;
pub mod validate;

use std::path::PathBuf;

use crate::{
    kernel::{
        attach::AttachError, dataplane::DataplaneError, mounts, namespace, netlink::NetlinkError,
        privileges, record_store::RecordError, KernelError,
    },
    plan::PlanError,
    policy::{bounded_file, rt_tables::RtTables, ConfigError},
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("policyroute needs CAP_NET_ADMIN and CAP_BPF (run it as root)")]
    Privileges,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(
        "the dataplane gives mark {dataplane:#x} but the reference classifier {reference:#x}: \
         please report this"
    )]
    Disagree { dataplane: u32, reference: u32 },
    #[error("device {0} does not exist")]
    NoDevice(String),
    /// A question `explain` refuses (no packet could ask it).
    #[error("explain: {0}")]
    Question(String),
    /// `explain`: the kernel found no route for the flow.
    #[error("explain: {0}")]
    Route(String),
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    #[error(transparent)]
    Claim(#[from] crate::kernel::daemon_file::ClaimError),
    /// Everything else was applied.
    #[error("{} change(s) failed, everything else is in place:\n{}", .0.len(), lines(.0))]
    Incomplete(Vec<NetlinkError>),
    /// `--adopt` took nothing over, as some of policyroute's own objects failed to go in;
    /// everything else was applied.
    #[error(
        "{} change(s) failed, so nothing was taken over (the routes and ip rules of others \
         stay, those replaced were put back); everything else is in place:\n{}",
        .0.len(),
        lines(.0)
    )]
    NotAdopted(Vec<NetlinkError>),
    /// Routes or ip rules of others are in the policy's way (the report names them).
    #[error(
        "refused: {0} route(s) or ip rule(s) policyroute does not own are in its way (named \
         above); nothing was changed. --adopt takes them over"
    )]
    Refused(usize),
}

impl ControlError {
    /// The exit status the CLI gives this error: 2 for input that is wrong (a policy, a
    /// list file, a question), 4 for missing privileges, 1 for the rest (the system said
    /// no, changes failed, or others' routes and rules are in the way).
    pub fn exit_status(&self) -> u8 {
        match self {
            ControlError::Config(_)
            | ControlError::Plan(_)
            | ControlError::NoDevice(_)
            | ControlError::Question(_) => 2,
            ControlError::Privileges => 4,
            _ => 1,
        }
    }
}

fn lines(errors: &[NetlinkError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    lines.join("\n")
}

/// Kernel-layer errors reach the CLI through [`KernelError`], whose messages they keep.
macro_rules! through_kernel {
    ($($error:ty),*) => {$(
        impl From<$error> for ControlError {
            fn from(e: $error) -> Self {
                Self::Kernel(e.into())
            }
        }
    )*};
}
through_kernel!(NetlinkError, DataplaneError, AttachError, RecordError);

/// Options every command shares.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where maps and the program are pinned (default: derived from the namespace).
    pub bpffs_dir: Option<PathBuf>,
    /// rt_tables file to resolve table names with (default: the system's files).
    pub rt_tables: Option<PathBuf>,
}

impl Options {
    fn pin_dir(&self) -> Result<PathBuf, KernelError> {
        match &self.bpffs_dir {
            Some(d) => Ok(d.clone()),
            None => mounts::default_pin_dir().map_err(KernelError::io("namespace id")),
        }
    }

    /// The table names policies may use.
    pub fn tables(&self) -> Result<RtTables, ControlError> {
        match &self.rt_tables {
            None => Ok(RtTables::system()),
            Some(path) => {
                let max = bounded_file::MAX_RT_TABLES_FILE;
                let text =
                    bounded_file::read_to_string(path, max).map_err(|source| ConfigError::Io {
                        path: path.clone(),
                        source,
                    })?;
                Ok(RtTables::builtin().with_text(&text))
            }
        }
    }
}

fn require_privileges() -> Result<(), ControlError> {
    if privileges::has_privileges() {
        Ok(())
    } else {
        Err(ControlError::Privileges)
    }
}

pub(crate) fn lock() -> Result<namespace::Lock, ControlError> {
    let lock = namespace::Lock::acquire(|| {
        eprintln!("policyroute: another policyroute command is running in this namespace; waiting")
    });
    Ok(lock.map_err(KernelError::io("taking the namespace lock"))?)
}
