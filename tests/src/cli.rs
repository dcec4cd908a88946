//! Running the `policyroute` binary the way operators (and acceptance tests) do:
//! `ip netns exec NS policyroute ...`, one process per command.
use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
};

use crate::{fixture::TempFile, netns::NetNs};

/// The binary under test: `$POLICYROUTE_BIN`, else `policyroute` next to the test
/// executable's `deps/` directory (`cargo xtask test` builds it first).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("POLICYROUTE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("policyroute");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p policyroute` (cargo xtask test does)",
        bin.display()
    );
    bin
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// `ip netns exec NS policyroute ARGS`, with extra environment variables.
pub fn run_env(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run policyroute");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn run(ns: &NetNs, args: &[&str]) -> Output {
    run_env(ns, args, &[])
}

/// Runs `cmd` (any program) and asserts it succeeded; returns its stdout.
pub fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and asserts success; returns stdout.
pub fn ok(ns: &NetNs, args: &[&str]) -> String {
    let out = run(ns, args);
    assert!(
        out.status.success(),
        "policyroute {args:?} failed: {}{}",
        out.stderr,
        out.stdout
    );
    out.stdout
}

/// `apply -c FILE` of `policy` (TOML text), asserted to succeed; returns stdout. The file
/// goes when the apply is done: nothing reads it later.
pub fn apply(ns: &NetNs, policy: &str) -> String {
    let file = TempFile::new("policy.toml", policy);
    ok(ns, &["apply", "-c", file.arg()])
}

pub fn json(ns: &NetNs, args: &[&str]) -> serde_json::Value {
    let mut full = args.to_vec();
    full.push("--json");
    serde_json::from_str(&ok(ns, &full)).expect("valid JSON")
}

/// The arguments of `explain` for a UDP flow arriving on lan0 (the LAN side of the test
/// topologies) from `src` (from port `sport`, when given) to `dst:dport`.
pub fn explain_udp_args(src: &str, sport: Option<u16>, dst: &str, dport: u16) -> Vec<String> {
    let mut args: Vec<String> = ["explain", "--iif", "lan0", "--proto", "udp", "--src", src]
        .map(String::from)
        .into();
    if let Some(p) = sport {
        args.extend(["--sport".into(), p.to_string()]);
    }
    args.extend([
        "--dst".into(),
        dst.into(),
        "--dport".into(),
        dport.to_string(),
    ]);
    args
}

/// [`explain_udp_args`] run in `ns`, with `--json`.
pub fn explain_udp(
    ns: &NetNs,
    src: &str,
    sport: Option<u16>,
    dst: &str,
    dport: u16,
) -> serde_json::Value {
    let args = explain_udp_args(src, sport, dst, dport);
    json(ns, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Packets counted for the rule named `name` in `status --json`.
pub fn packets(ns: &NetNs, name: &str) -> u64 {
    named(&json(ns, &["status"]), "rules", name)["packets"]
        .as_u64()
        .expect("packets")
}

/// The elements of `status[list]` that `keep` keeps.
pub fn items<'a>(
    status: &'a serde_json::Value,
    list: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<&'a serde_json::Value> {
    status[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} array in status: {status}"))
        .iter()
        .filter(|v| keep(v))
        .collect()
}

/// The element of `status[list]` whose `name` is `name`.
fn named<'a>(status: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
    status[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} array in status: {status}"))
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the {list} of status: {status}"))
}

/// The gateway `name` of `status --json`.
pub fn gateway(ns: &NetNs, name: &str) -> serde_json::Value {
    named(&json(ns, &["status"]), "gateways", name).clone()
}

/// The health of gateway `name` for `family` ("ipv4" or "ipv6") in `status --json`:
/// `{state: "up"|"down", since, checked, loss_percent, rtt_ms, transitions}`.
pub fn health(ns: &NetNs, name: &str, family: &str) -> serde_json::Value {
    let g = gateway(ns, name);
    let h = g["health"][family].clone();
    assert!(h.is_object(), "gateway {name} has no health.{family}: {g}");
    h
}

/// Everything policyroute owns in `ns` as independent tools see it: ip rules and routes
/// tagged with its protocol (`ip`), and TC programs attached to any device (see
/// [`tc_programs`]).
pub fn owned_objects(ns: &NetNs) -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["-4", "rule", "show"][..],
        &["-6", "rule", "show"],
        &["-4", "route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ] {
        out.extend(
            ns.exec("ip", args)
                .lines()
                .filter(|l| l.contains("proto 211"))
                .map(|l| format!("{args:?} {l}")),
        );
    }
    out.extend(tc_programs(ns));
    out
}

/// `dev: tcx|tc ingress|egress program-name` for every TC program on every device of `ns`:
/// tcx programs asked with BPF_PROG_QUERY through aya (Debian 12's bpftool predates tcx;
/// kernels before 6.6 have none), clsact filters as `tc filter show` lists them.
pub fn tc_programs(ns: &NetNs) -> Vec<String> {
    let devs = devices(ns);
    let mut out = tcx_programs(ns, &devs);
    for dev in &devs {
        for dir in ["ingress", "egress"] {
            let filters = ns.exec("tc", &["filter", "show", "dev", dev, dir]);
            out.extend(
                filters
                    .lines()
                    .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "bpf").nth(5))
                    .map(|name| format!("{dev}: tc {dir} {name}")),
            );
        }
    }
    out
}

fn devices(ns: &NetNs) -> Vec<String> {
    let links = ns.exec("ip", &["-o", "link", "show"]);
    links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|d| d.split('@').next().unwrap_or(d).to_string())
        .collect()
}

fn tcx_programs(ns: &NetNs, devs: &[String]) -> Vec<String> {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let _in = ns.enter();
    let mut out = Vec::new();
    for dev in devs {
        for (kind, dir) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            // Kernels before 6.6 have no tcx: nothing can be attached there.
            let Ok((_, progs)) = SchedClassifier::query_tcx(dev, kind) else {
                return Vec::new();
            };
            for p in progs {
                let name = p.name_as_str().unwrap_or("?");
                out.push(format!("{dev}: tcx {dir} {name}"));
            }
        }
    }
    out
}
