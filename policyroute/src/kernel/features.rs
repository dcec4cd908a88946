//! Kernel features the verifier cannot vouch for, probed by test-running a tiny program
//! (`policyroute-probes`) before a policy that needs one changes anything.
use aya::{programs::SchedClassifier, Ebpf};

use crate::kernel::{
    dataplane::{classifier_mut, DataplaneError},
    objects, testrun,
};

const TBID_PROBE: &str = "pr_probe_tbid";
/// What `bpf_fib_lookup` returns for flags it does not know.
const EINVAL: i32 = -22;

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error(
        "fast_path = true needs bpf_fib_lookup with BPF_FIB_LOOKUP_TBID, which this kernel \
         lacks (Linux 6.5 or newer); set fast_path = false to route by fwmark rules"
    )]
    NoFibTbid,
    #[error("probing the kernel's features: {0}")]
    Probe(#[from] DataplaneError),
}

/// Whether `bpf_fib_lookup` takes `BPF_FIB_LOOKUP_TBID` (a lookup in one given table).
pub fn require_fib_tbid() -> Result<(), FeatureError> {
    let mut obj = Ebpf::load(objects::probes()).map_err(DataplaneError::from)?;
    let prog: &mut SchedClassifier = classifier_mut(&mut obj, TBID_PROBE)?;
    prog.load().map_err(DataplaneError::from)?;
    // Any frame: the probe reads none of it.
    let frame = [0u8; 64];
    let out =
        testrun::run(prog, &frame, testrun::Input::default(), 1).map_err(DataplaneError::from)?;
    if out.verdict == EINVAL {
        return Err(FeatureError::NoFibTbid);
    }
    Ok(())
}
