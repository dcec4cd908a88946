//! The loaded classifier with a policy in its maps, run by BPF_PROG_TEST_RUN, and held to
//! the reference model on every run.
use policyroute::{
    kernel::{
        dataplane::Dataplane,
        maps::InstallStats,
        testrun::{self, Input, Outcome},
    },
    plan::{
        compile::{compile, CompileError, Compiled},
        Capacity,
    },
    policy::matcher::Rule,
    reference::classifier as reference,
};

pub struct Classifier {
    pub dp: Dataplane,
    pub rules: Vec<Rule>,
    pub mark_mask: u32,
}

/// `TC_ACT_UNSPEC`: the classifier's only verdict, so later tc programs still run.
pub const TC_ACT_UNSPEC: i32 = -1;

impl Classifier {
    /// Loads the program (the caller should be inside a test network namespace).
    pub fn load() -> Self {
        Self {
            dp: Dataplane::load(Capacity::default()).expect("load the classifier"),
            rules: Vec::new(),
            mark_mask: u32::MAX,
        }
    }

    /// Loads the program with maps sized for `rules` (a policy beyond the default sizes,
    /// such as a million set prefixes) and writes them in; also returns what they compiled to.
    pub fn load_for(rules: Vec<Rule>, mark_mask: u32) -> (Self, Compiled) {
        let compiled = compile(&rules, mark_mask, &Default::default()).expect("compile");
        let mut dp = Dataplane::load(Capacity::for_policy(&compiled)).expect("load the classifier");
        dp.maps.install(&compiled).expect("install");
        let c = Self {
            dp,
            rules,
            mark_mask,
        };
        (c, compiled)
    }

    /// Compiles `rules` and writes them into the maps.
    pub fn set_policy(&mut self, rules: Vec<Rule>, mark_mask: u32) -> InstallStats {
        let compiled = self.compile(&rules, mark_mask).expect("compile");
        let stats = self.dp.maps.install(&compiled).expect("install");
        self.rules = rules;
        self.mark_mask = mark_mask;
        stats
    }

    pub fn compile(&self, rules: &[Rule], mark_mask: u32) -> Result<Compiled, CompileError> {
        let previous = self.dp.maps.live_shapes().expect("read live shapes");
        compile(rules, mark_mask, &previous)
    }

    /// Runs `frame` once through the kernel program.
    pub fn run(&mut self, frame: &[u8], mark_in: u32) -> Outcome {
        let prog = self.dp.tc_ingress().expect("a program this process loaded");
        testrun::run(prog, frame, Input::mark(mark_in), 1).expect("BPF_PROG_TEST_RUN")
    }

    /// The mark the kernel program gives `frame`, asserted equal to the reference model's.
    pub fn mark(&mut self, frame: &[u8], mark_in: u32) -> u32 {
        let out = self.run(frame, mark_in);
        assert_eq!(out.verdict, TC_ACT_UNSPEC, "verdict");
        let want = reference::mark_after(&self.rules, self.mark_mask, frame, mark_in);
        assert_eq!(
            out.mark, want,
            "kernel and model disagree on {frame:02x?} (mark in {mark_in:#x})"
        );
        out.mark
    }
}
