//! The kernel features policyroute uses, probed before any change: a missing one stops an
//! apply with one line naming the feature, the first Linux release that has it and the
//! policy keys that need it, instead of a verifier log or an errno from deep inside.
//!
//! tcx is not here: without it the TC programs attach through clsact (see
//! `plan::tc_path`). docs/architecture.md's "Kernel features" table lists the same features.
use std::{ffi::CStr, io, sync::OnceLock};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

use crate::kernel::{bpf_syscalls as bpf, dataplane::classifier_mut, namespace, objects, testrun};

/// One kernel feature and how to tell whether this kernel has it.
pub struct Feature {
    pub name: &'static str,
    /// The first Linux release that has it.
    pub since: &'static str,
    /// The policy keys that need it (`every policy` for the core).
    pub needed_by: &'static str,
    probe: fn() -> bool,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) lacks {feature} (Linux {since} or newer), which {needed_by} needs"
)]
pub struct MissingFeature {
    pub feature: &'static str,
    pub since: &'static str,
    pub needed_by: &'static str,
    pub release: String,
}

const CORE: &str = "every policy";
const LOCAL: &str = "attach.local";
const FAST: &str = "fast_path";

/// Every feature, core first.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "tc classifier programs",
        since: "4.1",
        needed_by: CORE,
        probe: || is_program_supported(ProgramType::SchedClassifier).unwrap_or(false),
    },
    Feature {
        name: "BTF function info (for bpf_loop callbacks)",
        since: "5.0",
        needed_by: CORE,
        probe: || aya::features().btf().is_some_and(|b| b.btf_func()),
    },
    Feature {
        name: "the bpf_loop helper",
        since: "5.17",
        needed_by: CORE,
        probe: || helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_loop),
    },
    Feature {
        name: "LRU hash maps",
        since: "4.10",
        needed_by: CORE,
        probe: || is_map_supported(MapType::LruHash).unwrap_or(false),
    },
    Feature {
        name: "per-CPU arrays",
        since: "4.6",
        needed_by: CORE,
        probe: || is_map_supported(MapType::PerCpuArray).unwrap_or(false),
    },
    Feature {
        name: "hash maps without preallocation (BPF_F_NO_PREALLOC)",
        since: "4.6",
        needed_by: CORE,
        probe: bpf::probe_no_prealloc,
    },
    Feature {
        name: "batch map operations",
        since: "5.6",
        needed_by: CORE,
        probe: bpf::probe_batch_ops,
    },
    Feature {
        name: "BPF_PROG_BIND_MAP",
        since: "5.10",
        needed_by: CORE,
        probe: bpf::probe_bind_map,
    },
    Feature {
        name: "SO_NETNS_COOKIE",
        since: "5.14",
        needed_by: CORE,
        probe: || namespace::netns_cookie().is_ok(),
    },
    Feature {
        name: "cgroup socket address hooks (connect, sendmsg)",
        since: "4.18",
        needed_by: LOCAL,
        probe: || is_program_supported(ProgramType::CgroupSockAddr).unwrap_or(false),
    },
    Feature {
        name: "bpf_get_netns_cookie and bpf_get_socket_cookie in socket hooks",
        since: "5.7",
        needed_by: LOCAL,
        probe: || {
            helper(
                ProgramType::CgroupSockAddr,
                BpfHelper::BPF_FUNC_get_netns_cookie,
            ) && helper(
                ProgramType::CgroupSockAddr,
                BpfHelper::BPF_FUNC_get_socket_cookie,
            )
        },
    },
    Feature {
        name: "bpf_setsockopt and bpf_getsockopt in socket hooks",
        since: "5.8",
        needed_by: LOCAL,
        probe: || {
            helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_setsockopt)
                && helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_getsockopt)
        },
    },
    Feature {
        name: "ring buffer maps (aya-log's, for policyroute trace)",
        since: "5.8",
        needed_by: CORE,
        probe: || is_map_supported(MapType::RingBuf).unwrap_or(false),
    },
    Feature {
        name: "LPM trie maps",
        since: "4.11",
        needed_by: CORE,
        probe: || is_map_supported(MapType::LpmTrie).unwrap_or(false),
    },
    Feature {
        name: "the bpf_redirect_neigh helper",
        since: "5.10",
        needed_by: CORE,
        probe: || {
            helper(
                ProgramType::SchedClassifier,
                BpfHelper::BPF_FUNC_redirect_neigh,
            )
        },
    },
    Feature {
        name: "bpf_fib_lookup with BPF_FIB_LOOKUP_TBID",
        since: "6.5",
        needed_by: FAST,
        probe: fib_tbid,
    },
];

fn helper(program: ProgramType, helper: BpfHelper) -> bool {
    is_helper_supported(program, helper).unwrap_or(false)
}

/// Whether feature `i` is there, probed when first needed and then remembered for the
/// process (a daemon re-applies often). Only what the policy needs is probed: the fast
/// path's probe loads and test-runs a program, which every other apply would pay for.
fn probed(i: usize) -> bool {
    static PROBED: [OnceLock<bool>; FEATURES.len()] = [const { OnceLock::new() }; FEATURES.len()];
    *PROBED[i].get_or_init(|| (FEATURES[i].probe)())
}

/// The first feature missing among those the policy needs (`local`: `[attach] local`,
/// `fast`: `fast_path`).
pub fn check(local: bool, fast: bool) -> Result<(), MissingFeature> {
    let needed = |f: &Feature| {
        f.needed_by == CORE || (local && f.needed_by == LOCAL) || (fast && f.needed_by == FAST)
    };
    let missing = (0..FEATURES.len()).find(|&i| needed(&FEATURES[i]) && !probed(i));
    match missing.map(|i| &FEATURES[i]) {
        None => Ok(()),
        Some(f) => Err(MissingFeature {
            feature: f.name,
            since: f.since,
            needed_by: f.needed_by,
            release: release().unwrap_or_else(|_| "unknown release".into()),
        }),
    }
}

/// Whether `bpf_fib_lookup` takes `BPF_FIB_LOOKUP_TBID`: a flag checked when the helper
/// runs, not by the verifier, so a tiny program (`policyroute-probes`) is test-run and
/// answers `-EINVAL` where the kernel does not know it.
fn fib_tbid() -> bool {
    const EINVAL: i32 = -22;
    let run = || -> Result<i32, Box<dyn std::error::Error>> {
        let mut obj = aya::Ebpf::load(objects::probes())?;
        let prog = classifier_mut(&mut obj, "pr_probe_tbid")?;
        crate::kernel::dataplane::load_retrying(|| prog.load())?;
        // Any frame: the probe reads none of it.
        let out = testrun::run(prog, &[0u8; 64], testrun::Input::default(), 1)?;
        Ok(out.verdict)
    };
    run().is_ok_and(|rc| rc != EINVAL)
}

/// `uname -r`.
pub fn release() -> io::Result<String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes one utsname we own.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: uname NUL-terminates release within the array.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_is_one_line_with_the_kernel_it_needs_and_who_needs_it() {
        let f = &FEATURES[2];
        let e = MissingFeature {
            feature: f.name,
            since: f.since,
            needed_by: f.needed_by,
            release: "5.15.0-1-amd64".into(),
        };
        assert_eq!(
            e.to_string(),
            "this kernel (5.15.0-1-amd64) lacks the bpf_loop helper (Linux 5.17 or newer), \
             which every policy needs"
        );
    }

    #[test]
    fn every_feature_is_needed_by_the_core_or_a_key() {
        assert!(FEATURES
            .iter()
            .all(|f| [CORE, LOCAL, FAST].contains(&f.needed_by)));
        assert!(release().is_ok_and(|r| !r.is_empty()));
    }
}
