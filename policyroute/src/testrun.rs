//! Runs a loaded TC program on a synthesized frame with BPF_PROG_TEST_RUN and reads the
//! resulting `skb->mark` back from the context.
use std::time::Duration;

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};
use policyroute_common::SKB_MARK_OFFSET;

/// `sizeof(struct __sk_buff)`: the context handed in and read back.
const SKB_CTX_SIZE: usize = 192;

/// Result of one test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub mark: u32,
    pub verdict: i32,
    /// Average time per repetition, as the kernel measured it.
    pub duration: Duration,
}

/// Runs `prog` `repeat` times on `frame` (a full Ethernet frame) entering with `mark_in`.
pub fn run(
    prog: &SchedClassifier,
    frame: &[u8],
    mark_in: u32,
    repeat: u32,
) -> Result<RunOutcome, ProgramError> {
    let mut ctx_in = [0u8; SKB_CTX_SIZE];
    ctx_in[SKB_MARK_OFFSET..SKB_MARK_OFFSET + 4].copy_from_slice(&mark_in.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_CTX_SIZE];
    let mut data_out = vec![0u8; frame.len() + 256];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut data_out),
        ctx_in: Some(&ctx_in),
        ctx_out: Some(&mut ctx_out),
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    })?;
    let mark = u32::from_ne_bytes(
        ctx_out[SKB_MARK_OFFSET..SKB_MARK_OFFSET + 4]
            .try_into()
            .expect("four bytes"),
    );
    Ok(RunOutcome {
        mark,
        verdict: result.return_value as i32,
        duration: result.duration,
    })
}
