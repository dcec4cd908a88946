//! Runs a loaded TC program on a synthesized frame (BPF_PROG_TEST_RUN through aya's
//! [`TestRun`]) and reads the resulting `skb->mark` back. The one test-run path of
//! `explain`, the tests and the benchmarks.
use std::{borrow::Cow, time::Duration};

use aya::programs::{ProgramError, ProgramInfo, SchedClassifier, TestRun, TestRunOptions};
use policyroute_common::{names::TC_INGRESS, EXPLAIN_MAGIC};

/// `sizeof(struct __sk_buff)`: the context handed in and read back.
const SKB_SIZE: usize = 192;
/// Offsets in `struct __sk_buff` of the fields a test run sets or reads.
const SKB_MARK: usize = 8;
const SKB_IFINDEX: usize = 40;
const SKB_CB0: usize = 48;

/// The packet's context on entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Input {
    pub mark: u32,
    /// The device it arrives on (0: none; devices without a role classify).
    pub ifindex: u32,
    /// Tell the program it is being explained: it must not count or record anything.
    pub explain: bool,
}

impl Input {
    pub fn mark(mark: u32) -> Self {
        Self {
            mark,
            ..Self::default()
        }
    }

    fn context(&self) -> [u8; SKB_SIZE] {
        let mut ctx = [0u8; SKB_SIZE];
        put(&mut ctx, SKB_MARK, self.mark);
        put(&mut ctx, SKB_IFINDEX, self.ifindex);
        if self.explain {
            put(&mut ctx, SKB_CB0, EXPLAIN_MAGIC);
        }
        ctx
    }
}

fn put(ctx: &mut [u8], at: usize, value: u32) {
    ctx[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

/// Result of one test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub mark: u32,
    pub verdict: i32,
    /// `skb->cb` afterwards (the fast path answers explain there).
    pub cb: [u32; 5],
    /// Average time per repetition, as the kernel measured it.
    pub duration: Duration,
}

/// Runs `prog` `repeat` times on `frame` (a full Ethernet frame).
pub fn run(
    prog: &SchedClassifier,
    frame: &[u8],
    input: Input,
    repeat: u32,
) -> Result<Outcome, ProgramError> {
    let ctx_in = input.context();
    let mut ctx_out = [0u8; SKB_SIZE];
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
        ctx_out[SKB_MARK..SKB_MARK + 4]
            .try_into()
            .expect("four bytes"),
    );
    let cb = std::array::from_fn(|i| {
        let at = SKB_CB0 + i * 4;
        u32::from_ne_bytes(ctx_out[at..at + 4].try_into().expect("four bytes"))
    });
    Ok(Outcome {
        mark,
        cb,
        verdict: result.return_value as i32,
        duration: result.duration,
    })
}

/// An already loaded TC ingress program (e.g. found attached), as a program aya can
/// test-run.
pub fn loaded(info: ProgramInfo) -> Result<SchedClassifier, ProgramError> {
    SchedClassifier::from_program_info(info, Cow::Borrowed(TC_INGRESS))
}
