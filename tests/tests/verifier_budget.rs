//! The verifier budget: every eBPF program, in its largest configuration, keeps wide
//! headroom under the BPF limits, so that another compiler (which inlines, spills and
//! passes values differently) still builds and loads it. cilium's test/verifier keeps the
//! same kind of record per program.
//!
//! - The stack of every call chain at most [`STACK_BUDGET`] bytes of the verifier's 512.
//! - Instructions processed at most 25 % over the ceiling recorded in
//!   `policyroute-ebpf/verifier-budget.txt` (checked on the kernel it was recorded on;
//!   other kernels count differently). Record again with
//!   `POLICYROUTE_RECORD_VERIFIER_BUDGET=1 cargo xtask test verifier_budget` after a
//!   change that is meant to cost more, and say why in the commit.
//! - Out-of-line functions declare at most 5 arguments counting a hidden return pointer,
//!   and scalar results (the linker refuses more; the rule fails first, here).
use std::{collections::BTreeMap, path::PathBuf};

use policyroute::kernel::objects;
use policyroute_common::names::{TRACE_GLOBAL, TRIES_GLOBAL};
use policyroute_tests::verifier::{verify_object, Report, STACK_LIMIT};

/// Bytes of stack one call chain may use: 512 less a margin for compiler drift.
const STACK_BUDGET: u32 = 400;
/// How far instructions processed may grow over the recorded ceiling.
const INSNS_SLACK: f64 = 1.25;
const RECORD_VAR: &str = "POLICYROUTE_RECORD_VERIFIER_BUDGET";

fn budget_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policyroute-ebpf/verifier-budget.txt")
}

/// The running kernel's "major.minor".
fn kernel() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    release
        .trim()
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// The recorded kernel and ceilings (`kernel 6.18`, then `program insns` lines).
fn recorded() -> (String, BTreeMap<String, u64>) {
    let text = std::fs::read_to_string(budget_file()).unwrap_or_default();
    let mut kernel = String::new();
    let mut ceilings = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("kernel"), Some(v)) => kernel = v.to_string(),
            (Some(program), Some(n)) => {
                ceilings.insert(program.to_string(), n.parse().expect("ceiling"));
            }
            _ => {}
        }
    }
    (kernel, ceilings)
}

fn record(reports: &[Report]) {
    let mut text = String::from(
        "# Instructions the verifier processed per program, in the largest configuration\n\
         # (tests/tests/verifier_budget.rs fails at 25 % over). Written by\n\
         # POLICYROUTE_RECORD_VERIFIER_BUDGET=1 cargo xtask test verifier_budget\n",
    );
    text += &format!("kernel {}\n", kernel());
    for r in reports {
        text += &format!("{} {}\n", r.program, r.insns);
    }
    std::fs::write(budget_file(), text).expect("write the budget file");
}

fn table(reports: &[Report]) -> String {
    let mut out = format!(
        "{:<20} {:>6} {:>10} {:>8}  {}\n",
        "program", "chain", "insns", "time", "worst chain (frame stack in bytes); all frames"
    );
    for r in reports {
        out += &format!(
            "{:<20} {:>6} {:>10} {:>6}us  {}\n",
            r.program,
            r.worst_stack,
            r.insns,
            r.time_us,
            r.chain_text()
        );
        let frames: Vec<String> = r
            .frames
            .iter()
            .map(|f| format!("{}={}", f.name, f.stack))
            .collect();
        out += &format!("{:<49}frames: {}\n", "", frames.join(" "));
    }
    out
}

#[test]
fn every_program_keeps_headroom_under_the_bpf_limits() {
    // The largest configuration: prefix tries and trace code in; fast path, sticky, local
    // and egress are runtime switches, so the verifier checks their code in every load.
    let all_on = [(TRIES_GLOBAL, 1), (TRACE_GLOBAL, 1)];
    let mut reports = Vec::new();
    for (object, globals) in [
        (objects::classifier(), &all_on[..]),
        (objects::probes(), &[][..]),
    ] {
        reports.extend(verify_object(object, globals).expect("verify the programs"));
    }
    let shown = format!("verifier budget (Linux {}):\n{}", kernel(), table(&reports));
    println!("{shown}");
    // `cargo xtask test` prints it after the suite (the harness keeps a passing test's
    // output to itself).
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("verifier-budget.txt"),
        &shown,
    );

    let mut faults = Vec::new();
    for r in &reports {
        if r.worst_stack > STACK_BUDGET {
            faults.push(format!(
                "{}: a call chain uses {} bytes of stack (budget {STACK_BUDGET}, verifier \
                 limit {STACK_LIMIT}): {}",
                r.program,
                r.worst_stack,
                r.chain_text()
            ));
        }
        for f in &r.signature_faults {
            faults.push(format!("{}: {f}", r.program));
        }
    }
    if std::env::var_os(RECORD_VAR).is_some() {
        record(&reports);
        println!("recorded the ceilings in {}", budget_file().display());
    } else {
        let (recorded_on, ceilings) = recorded();
        if recorded_on == kernel() {
            for r in &reports {
                let Some(&ceiling) = ceilings.get(&r.program) else {
                    faults.push(format!(
                        "{}: no recorded ceiling; record with {RECORD_VAR}=1",
                        r.program
                    ));
                    continue;
                };
                if r.insns as f64 > ceiling as f64 * INSNS_SLACK {
                    faults.push(format!(
                        "{}: the verifier processed {} instructions, over 125 % of the \
                         recorded {ceiling}",
                        r.program, r.insns
                    ));
                }
            }
        } else {
            println!(
                "instruction ceilings were recorded on Linux {recorded_on}, not checked on {}",
                kernel()
            );
        }
    }
    assert!(faults.is_empty(), "over budget:\n{}", faults.join("\n"));
}
