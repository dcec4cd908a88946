//! `cargo xtask bench classify`: classifier cost per packet, measured by BPF_PROG_TEST_RUN,
//! at 1, 1,000, 10,000 and 100,000 rules of one shape per family, hit and miss, IPv4 and
//! IPv6, beside an empty TC program measured in the same run. The program is the one
//! `policyroute apply` (the real CLI) attached, with the maps it sized for the policy, found
//! on the device and run through `kernel::testrun` (the path explain uses). No hot packet: each measurement runs thousands of different
//! packets (hits spread over all rules, misses to random keys) once each, in shuffled order;
//! the kernel times each single run. A second table splits what a hit at 100,000 rules costs;
//! a third shows the cost per shape (a miss costs one hash lookup per shape of its family).
use std::{fmt::Write as _, net::IpAddr, process::Command, time::Duration};

use aya::{
    programs::{tc::TcAttachType, SchedClassifier},
    Ebpf,
};
use policyroute::{
    kernel::{
        dataplane::{classifier_mut, Dataplane},
        objects, pins, testrun,
    },
    plan::compile::compile_with_slots,
    policy::matcher::Rule,
    reference::frame::FrameSpec,
};
use policyroute_bench::{
    objects::{self as bench_objects, NOOP},
    results::{self, env_or, measure, Spread, Table, SIZES},
};
use policyroute_tests::{
    cli,
    fixture::{frame, lone_router, TempFile, TCP},
    netns::NetNs,
    rules::rule,
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::{json, Value};

/// The target: 100k rules cost at most this many times one rule.
const TARGET_RATIO: f64 = 1.5;
/// Rounds of the trace table: a 2 ns difference needs more than the other tables (the
/// machine's scatter is tens of ns); 61 rounds of its 12 cases take about 20 s.
const TRACE_ROUNDS: usize = 61;
/// A frame's expected mark when a group's flow hash picks it: any.
const ANY_MARK: u32 = u32::MAX;

struct Bench {
    ns: NetNs,
    /// Distinct packets per measurement, each run once.
    packets: usize,
    /// Measurements per case (classifier and empty program alternate); median reported.
    rounds: usize,
    rng: StdRng,
}

fn main() -> anyhow::Result<()> {
    let mut b = Bench {
        ns: lone_router("classify"),
        packets: env_or("POLICYROUTE_BENCH_PACKETS", 4096),
        rounds: env_or("POLICYROUTE_BENCH_ROUNDS", 9),
        rng: StdRng::seed_from_u64(0x5eed),
    };
    let mut noop_obj = {
        let _inside = b.ns.enter();
        let mut obj = Ebpf::load(bench_objects::noop())?;
        classifier_mut(&mut obj, NOOP)?.load()?;
        obj
    };
    let noop: &SchedClassifier = classifier_mut(&mut noop_obj, NOOP)?;
    if let Some(baseline) = std::env::var_os("POLICYROUTE_BENCH_BASELINE") {
        return ab(&mut b, &std::fs::read(baseline)?);
    }
    let mut table = Table::new(&[
        ">rules per family",
        ">apply s",
        "family",
        "case",
        ">ns/packet",
        ">empty program",
        ">classifier − empty",
        ">vs 1 rule",
    ]);
    let mut rows = Vec::new();
    let mut one_rule = std::collections::HashMap::new();
    let mut worst_ratio: f64 = 0.0;
    let mut prog = None;
    // `POLICYROUTE_BENCH_CLASSIFY=sets` (or `trace`): only the 1-rule reference and that
    // table, written to `classify-sets.*` (`classify-trace.*`): a quick run while working on
    // one of them.
    let only = std::env::var("POLICYROUTE_BENCH_CLASSIFY").ok();
    let wanted = |table: &str| only.as_deref().is_none_or(|o| o == table);
    let sizes = if only.is_some() {
        &SIZES[..1]
    } else {
        &SIZES[..]
    };
    for &n in sizes {
        eprintln!("classify: {n} rules per family");
        let (applied, took) = b.apply(&same_shape_policy(n))?;
        for v6 in [false, true] {
            for hit in [true, false] {
                let frames: Vec<(Vec<u8>, u32)> = (0..b.packets)
                    .map(|_| random_frame(&mut b.rng, n, v6, hit))
                    .collect();
                let (cost, base) = b.measure(&applied, noop, &frames)?;
                let first = *one_rule.entry((v6, hit)).or_insert(cost.median);
                let ratio = cost.median / first;
                if n == *SIZES.last().unwrap() {
                    worst_ratio = worst_ratio.max(ratio);
                }
                let family = if v6 { "IPv6" } else { "IPv4" };
                let case = if hit { "hit" } else { "miss" };
                table.row(vec![
                    n.to_string(),
                    format!("{:.2}", took.as_secs_f64()),
                    family.into(),
                    case.into(),
                    cost.show(1),
                    format!("{:.1}", base.median),
                    format!("{:.1}", cost.median - base.median),
                    format!("{ratio:.2}x"),
                ]);
                rows.push(json!({
                    "rules": n, "family": family, "case": case,
                    "ns": cost.json(), "empty_ns": base.json(), "vs_one_rule": ratio,
                }));
            }
        }
        prog = Some(applied);
    }
    let verdict = if worst_ratio <= TARGET_RATIO {
        "met"
    } else {
        "**missed**"
    };
    let applied = prog.expect("at least one size");
    let skipped = || (Table::new(&["skipped"]), Vec::new());
    let attribution = if only.is_some() {
        skipped()
    } else {
        attribution(&mut b, &applied, noop)?
    };
    let shapes = if only.is_some() {
        skipped()
    } else {
        shapes_table(&mut b, noop)?
    };
    let targets = if only.is_some() {
        skipped()
    } else {
        targets_table(&mut b, noop)?
    };
    let trace = if wanted("trace") {
        trace_table(&mut b, noop)?
    } else {
        skipped()
    };
    let sets = if wanted("sets") {
        sets_table(&mut b)?
    } else {
        skipped()
    };
    let _ = cli::run(&b.ns, &["flush"]);
    let md = format!(
        "### Classifier: ns/packet by BPF_PROG_TEST_RUN ({} different packets per measurement, \
         each run once; median (min–max) of {} measurements)\n\n{}\n\
         Worst 100k-vs-1-rule ratio: {worst_ratio:.2}x (target at most {TARGET_RATIO}x: {verdict}).\n\n\
         Where a hit at {big} IPv4 rules spends its time (same frames, the cases interleaved \
         round by round, median of {} rounds):\n\n{}\n\
         Worst case (a miss scans every shape), 1,000 IPv4 rules:\n\n{}\n\
         What the rule's target adds, 1,000 IPv4 rules, hits:\n\n{}\n\
         What `trace` costs while no trace runs (target: within 2 ns): two copies of the \
         applied 1-rule classifier's programs on its maps, with the trace code and with it \
         dropped by the verifier ({trace_insns}), interleaved round by round with the applied \
         program, median (min–max) of {} rounds; differences are taken within each round. \
         \"Two loads of the same code\" is the applied program minus the copy with trace code: \
         how far identical programs differ in this run.\n\n{}\n\
         Prefix sets: one `[[set]]`: disjoint N, N prefixes per family in the lower half \
         of the address space (misses go to the upper half), none inside another (each one an \
         entry of the trie), lengths drawn uniformly from /16–/32 (IPv4) and /16–/128 (IPv6) \
         and redrawn where they do not fit; uniform 100000: lengths drawn uniformly from \
         /1–/32 and /1–/128 with no other constraint, so the list holds its family's /1 many \
         times over and the trie keeps only that (a prefix inside another of the same set \
         adds nothing); country: `results::country_list`, 50,000 IPv4 prefixes over 24 lengths \
         (mostly /16–/24) and 37,000 IPv6 over about 110 (mostly /29, /32, /48); a \
         rule `dst = \"@big\"` alone, or with `proto = \"tcp\"` and \
         `dport = 443`. Each row runs interleaved, round by round, with the 1-rule policy of \
         the first table (applied in a second namespace, same family and case, its own \
         frames); \"vs 1 rule\" is the median (min–max) of the per-round ratios; \"one hot \
         packet\" runs the first frame of each 1,000 times per call in the kernel's loop (what \
         the instructions cost, with nothing to miss in the caches); trie: the nodes the image takes (the map holds two images) and the prefixes it holds:\n\n{}",
        b.packets,
        b.rounds,
        table.markdown(),
        b.rounds * 2 + 1,
        attribution.0.markdown(),
        shapes.0.markdown(),
        targets.0.markdown(),
        TRACE_ROUNDS,
        trace.0.markdown(),
        sets.0.markdown(),
        big = SIZES[SIZES.len() - 1],
        trace_insns = trace
            .1
            .first()
            .map(|r| format!("{} instructions with it, {} without", r["insns_with"], r["insns_without"]))
            .unwrap_or_default(),
    );
    b.write_results(
        &only
            .as_ref()
            .map_or("classify".into(), |o| format!("classify-{o}")),
        &md,
        json!({
            "rows": rows,
            "worst_ratio": worst_ratio,
            "target_ratio": TARGET_RATIO,
            "shapes": shapes.1,
            "attribution": attribution.1,
            "targets": targets.1,
            "trace": trace.1,
            "sets": sets.1,
        }),
    );
    Ok(())
}

impl Bench {
    /// `results::write_results` with the environment and this run's sizes added to `json`.
    fn write_results(&self, name: &str, md: &str, mut json: serde_json::Value) {
        json["environment"] = results::environment();
        json["packets"] = json!(self.packets);
        json["rounds"] = json!(self.rounds);
        results::write_results(name, md, &json);
    }

    /// [`apply_in`] the bench's namespace.
    fn apply(&self, policy: &str) -> anyhow::Result<(SchedClassifier, Duration)> {
        apply_in(&self.ns, policy)
    }

    /// Median (and spread) ns/packet of the classifier and of the empty program over the
    /// same frames, alternating which goes first; checks every mark the classifier set.
    fn measure(
        &mut self,
        prog: &SchedClassifier,
        noop: &SchedClassifier,
        frames: &[(Vec<u8>, u32)],
    ) -> anyhow::Result<(Spread, Spread)> {
        let cases = [(prog, frames, true), (noop, frames, false)];
        let ns = interleaved(&mut self.rng, self.rounds, &cases, false)?;
        Ok((Spread::of(&ns[0]), Spread::of(&ns[1])))
    }
}

/// Runs every frame once, in `order`; mean ns per run as the kernel timed them.
fn run_once_each(
    prog: &SchedClassifier,
    frames: &[(Vec<u8>, u32)],
    order: &[usize],
    check: bool,
) -> anyhow::Result<f64> {
    let mut total = 0u64;
    for &i in order {
        let (frame, mark) = &frames[i];
        let out = testrun::run(prog, frame, testrun::Input::default(), 1)?;
        if check && *mark != ANY_MARK {
            anyhow::ensure!(out.mark == *mark, "mark {} != {mark}", out.mark);
        }
        total += out.duration.as_nanos() as u64;
    }
    Ok(total as f64 / order.len() as f64)
}

/// Runs `frame` in the kernel's test-run loop: 16 calls of 1,000 runs each; mean ns per run
/// as the kernel timed them (steady state: code and data stay hot).
fn run_looped(
    prog: &SchedClassifier,
    (frame, mark): &(Vec<u8>, u32),
    check: bool,
) -> anyhow::Result<f64> {
    const CALLS: u32 = 16;
    let mut total = 0.0;
    for _ in 0..CALLS {
        let out = testrun::run(prog, frame, testrun::Input::default(), 1000)?;
        if check && *mark != ANY_MARK {
            anyhow::ensure!(out.mark == *mark, "mark {} != {mark}", out.mark);
        }
        total += out.duration.as_nanos() as f64;
    }
    Ok(total / f64::from(CALLS))
}

/// Rule `i` of every family: tcp from one /32 (/128) source to destination port p(i);
/// IPv4 rules mark 1, IPv6 rules mark 2 (raw marks: no gateway needed).
fn same_shape_rules(n: usize) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(2 * n);
    for i in 0..n {
        let p = port(i);
        for (name, src, mark) in same_shape_families(i) {
            rules.push(
                rule(&name, mark)
                    .proto(TCP)
                    .src(&src)
                    .dport(&[[p, p]])
                    .build(),
            );
        }
    }
    rules
}

/// [`same_shape_rules`] as a policy file.
fn same_shape_policy(n: usize) -> String {
    let mut s = String::from("[attach]\ningress = [\"lan0\"]\n\n");
    for i in 0..n {
        let p = port(i);
        for (name, src, mark) in same_shape_families(i) {
            let _ = write!(
                s,
                "[[rule]]\nname = \"{name}\"\nproto = \"tcp\"\nsrc = \"{src}\"\n\
                 dport = {p}\nmark = {mark}\n\n"
            );
        }
    }
    s
}

/// Name, source prefix and mark of rule `i` in each family.
fn same_shape_families(i: usize) -> [(String, String, u32); 2] {
    [
        (format!("v4-{i}"), format!("{}/32", v4_src(i)), 1),
        (format!("v6-{i}"), format!("{}/128", v6_src(i)), 2),
    ]
}

fn port(i: usize) -> u16 {
    1000 + (i % 50_000) as u16
}

/// Addresses inside 198.18.0.0/15 (131,072 of them) and 2001:db8::/32.
fn v4_src(i: usize) -> IpAddr {
    IpAddr::from((0xc612_0000u32 + i as u32).to_be_bytes())
}

fn v6_src(i: usize) -> IpAddr {
    IpAddr::from(((0x2001_0db8_u128 << 96) | i as u128).to_be_bytes())
}

/// A random hit (a random rule, any source port) or a random miss (a source of the policy's
/// range on port 999, which no rule has), with the mark it must get.
fn random_frame(rng: &mut StdRng, n: usize, v6: bool, hit: bool) -> (Vec<u8>, u32) {
    let i = rng.gen_range(0..n.max(1));
    let src = if v6 { v6_src(i) } else { v4_src(i) };
    let dst: IpAddr = if v6 {
        "2001:db8:ffff::1".parse().unwrap()
    } else {
        "203.0.113.1".parse().unwrap()
    };
    let (dport, mark) = match (hit, v6) {
        (true, false) => (port(i), 1),
        (true, true) => (port(i), 2),
        (false, _) => (999, 0),
    };
    let sport = rng.gen_range(1024..65535);
    (FrameSpec::new(TCP, src, sport, dst, dport).build(), mark)
}

/// IPv4 hits at the largest size three ways, interleaved round by round: the applied
/// classifier (a counter slot per rule), the same rules counting into one slot in a second
/// dataplane of the same capacity (the per-rule counter's share), and one hot packet
/// repeated (what a single-packet benchmark sees).
fn attribution(
    b: &mut Bench,
    applied: &SchedClassifier,
    noop: &SchedClassifier,
) -> anyhow::Result<(Table, Vec<serde_json::Value>)> {
    let n = SIZES[SIZES.len() - 1];
    let rules = same_shape_rules(n);
    let _inside = b.ns.enter();
    let capacity = Dataplane::open(&applied.info()?)?.maps.capacity()?;
    let mut shared = Dataplane::load(capacity)?;
    let one_slot = compile_with_slots(
        &rules,
        &vec![0; rules.len()],
        u32::MAX,
        &shared.maps.live_shapes()?,
    )?;
    shared.maps.install(&one_slot)?;
    let shared_prog: &SchedClassifier = shared
        .tc_ingress()
        .ok_or_else(|| anyhow::anyhow!("no TC program in the loaded dataplane"))?;
    let frames: Vec<(Vec<u8>, u32)> = (0..b.packets)
        .map(|_| random_frame(&mut b.rng, n, false, true))
        .collect();
    let hot = vec![frames[0].clone(); frames.len()];
    let cases = [
        "a counter slot per rule (as applied), different packets",
        "all rules count into one slot, different packets",
        "a counter slot per rule, one hot packet repeated",
        "empty program, different packets",
    ];
    let runs: [Case; 4] = [
        (applied, &frames, true),
        (shared_prog, &frames, true),
        (applied, &hot, true),
        (noop, &frames, false),
    ];
    let samples = interleaved(&mut b.rng, b.rounds * 2 + 1, &runs, false)?;
    let names: Vec<&str> = cases.iter().take(3).copied().collect();
    Ok(over_empty("IPv4 hit", "case", &names, &samples))
}

/// A table of each case's cost against the empty program's, whose samples follow the
/// cases'; and the same as JSON rows keyed by `key`.
fn over_empty(head: &str, key: &str, cases: &[&str], samples: &[Vec<f64>]) -> (Table, Vec<Value>) {
    let base = Spread::of(&samples[cases.len()]);
    let mut table = Table::new(&[head, ">ns/packet", ">empty program", ">classifier − empty"]);
    let mut rows = Vec::new();
    for (case, what) in cases.iter().enumerate() {
        let cost = Spread::of(&samples[case]);
        table.row(vec![
            (*what).into(),
            cost.show(1),
            format!("{:.1}", base.median),
            format!("{:.1}", cost.median - base.median),
        ]);
        rows.push(json!({key: what, "ns": cost.json(), "empty_ns": base.json()}));
    }
    (table, rows)
}

/// What trace costs while no trace runs: two copies of the applied 1-rule classifier's
/// programs, loaded the same way on its maps, one with the trace code and one without
/// (`TRACE_GLOBAL` 0: the verifier drops it), interleaved round by round on the same
/// frames with the applied program and the empty one. The applied program against the copy
/// with trace code (identical code) shows how far two loads of one program differ anyway.
fn trace_table(
    b: &mut Bench,
    noop: &SchedClassifier,
) -> anyhow::Result<(Table, Vec<serde_json::Value>)> {
    let (applied, _) = b.apply(&same_shape_policy(1))?;
    let _inside = b.ns.enter();
    let (mut with, mut without) = trace_copies(&applied)?;
    let progs = [&applied, tc_of(&mut with)?, tc_of(&mut without)?, noop];
    let insns = |p: &SchedClassifier| -> anyhow::Result<u32> {
        Ok(p.info()?.size_translated().unwrap_or(0) / 8)
    };
    let (with_insns, bare_insns) = (insns(progs[1])?, insns(progs[2])?);
    anyhow::ensure!(
        bare_insns < with_insns,
        "the copy without trace code has {bare_insns} instructions, the one with it {with_insns}"
    );
    let mut table = Table::new(&[
        "1 rule",
        ">with trace code (idle)",
        ">without",
        ">difference",
        ">two loads of the same code",
        ">empty program",
    ]);
    let mut rows = Vec::new();
    for v6 in [false, true] {
        for hit in [true, false] {
            let frames: Vec<(Vec<u8>, u32)> = (0..b.packets)
                .map(|_| random_frame(&mut b.rng, 1, v6, hit))
                .collect();
            let case = format!(
                "{} {}",
                if v6 { "IPv6" } else { "IPv4" },
                if hit { "hit" } else { "miss" }
            );
            let hot = vec![frames[0].clone(); frames.len()];
            for (what, set, looped) in [
                ("different packets", &frames, false),
                ("one packet, a run per call", &hot, false),
                ("one packet, 1,000 runs per call", &hot, true),
            ] {
                let cases: Vec<Case> = progs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (*p, &set[..], i + 1 < progs.len()))
                    .collect();
                let ns = interleaved(&mut b.rng, TRACE_ROUNDS, &cases, looped)?;
                let [applied, with, bare, base] = [0, 1, 2, 3].map(|i| Spread::of(&ns[i]));
                let diff = |x: usize, y: usize| {
                    let d: Vec<f64> = ns[x].iter().zip(&ns[y]).map(|(a, b)| a - b).collect();
                    Spread::of(&d)
                };
                let (cost, same) = (diff(1, 2), diff(0, 1));
                table.row(vec![
                    format!("{case}, {what}"),
                    with.show(1),
                    bare.show(1),
                    cost.show(2),
                    same.show(2),
                    format!("{:.1}", base.median),
                ]);
                rows.push(json!({
                    "case": case, "packets": what, "with_ns": with.json(), "without_ns": bare.json(),
                    "difference_ns": cost.json(), "applied_ns": applied.json(),
                    "same_code_difference_ns": same.json(), "empty_ns": base.json(),
                    "insns_with": with_insns, "insns_without": bare_insns,
                }));
            }
        }
    }
    Ok((table, rows))
}

fn tc_of(dp: &mut Dataplane) -> anyhow::Result<&SchedClassifier> {
    dp.tc_ingress()
        .map(|p| &*p)
        .ok_or_else(|| anyhow::anyhow!("no TC program in a loaded copy"))
}

/// Two copies of `applied`'s programs on its maps: with the trace code, and without.
fn trace_copies(applied: &SchedClassifier) -> anyhow::Result<(Dataplane, Dataplane)> {
    let object = objects::classifier();
    let [with, without] = copies(applied, [(object, true), (object, false)])?;
    Ok((with, without))
}

/// Copies of `applied`'s programs on its maps (shared through pins that are removed again
/// at once), one per (object, trace code) asked for.
fn copies<const N: usize>(
    applied: &SchedClassifier,
    wanted: [(&[u8], bool); N],
) -> anyhow::Result<[Dataplane; N]> {
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/prt-bench-copies-{}",
        std::process::id()
    ));
    let mut opened = Dataplane::open(&applied.info()?)?;
    pins::pin(&mut opened, &pins)?;
    let loaded = wanted.map(|(object, trace)| Dataplane::load_sharing_with(&pins, object, trace));
    pins::unpin(&pins)?;
    let mut out = Vec::with_capacity(N);
    for dp in loaded {
        out.push(dp?);
    }
    Ok(out.try_into().unwrap_or_else(|_| unreachable!("N copies")))
}

/// `POLICYROUTE_BENCH_BASELINE=OBJECT`: the applied classifier against the TC ingress
/// program of another build of the classifier object (a baseline), loaded on the applied
/// program's maps, at 1 and 100,000 rules, IPv4 and IPv6, hits and misses; interleaved round
/// by round over the same frames. Written to `classify-ab.*`.
fn ab(b: &mut Bench, baseline: &[u8]) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        ">rules per family",
        "family",
        "case",
        ">this build ns",
        ">baseline ns",
        ">this / baseline",
        ">this / its own second load",
        ">one hot packet: this / baseline",
        ">one hot packet: this / own second load",
    ]);
    let mut rows = Vec::new();
    for n in [1, SIZES[SIZES.len() - 1]] {
        eprintln!("classify A/B: {n} rules per family");
        let (applied, _) = b.apply(&same_shape_policy(n))?;
        // Beside the baseline, this build loaded again: how far two loads of identical code
        // differ (JIT image placement), the noise floor of the comparison.
        let [mut copy, mut again] =
            copies(&applied, [(baseline, true), (objects::classifier(), true)])?;
        let base = tc_of(&mut copy)?;
        let same = tc_of(&mut again)?;
        for v6 in [false, true] {
            for hit in [true, false] {
                let frames: Vec<(Vec<u8>, u32)> = (0..b.packets)
                    .map(|_| random_frame(&mut b.rng, n, v6, hit))
                    .collect();
                let cases = [
                    (&applied, &frames[..], true),
                    (base, &frames[..], true),
                    (same, &frames[..], true),
                ];
                let ns = interleaved(&mut b.rng, b.rounds, &cases, false)?;
                let (this, that) = (Spread::of(&ns[0]), Spread::of(&ns[1]));
                let (ratio, floor) = (ratios(&ns[0], &ns[1]), ratios(&ns[0], &ns[2]));
                let hot = interleaved(&mut b.rng, b.rounds, &cases, true)?;
                let (hot, hot_floor) = (ratios(&hot[0], &hot[1]), ratios(&hot[0], &hot[2]));
                let family = if v6 { "IPv6" } else { "IPv4" };
                let case = if hit { "hit" } else { "miss" };
                table.row(vec![
                    n.to_string(),
                    family.into(),
                    case.into(),
                    this.show(1),
                    that.show(1),
                    ratio.show(3),
                    floor.show(3),
                    hot.show(3),
                    hot_floor.show(3),
                ]);
                rows.push(json!({
                    "rules": n, "family": family, "case": case,
                    "ns": this.json(), "baseline_ns": that.json(), "ratio": ratio.json(),
                    "hot_ratio": hot.json(), "same_code_ratio": floor.json(),
                    "hot_same_code_ratio": hot_floor.json(),
                }));
            }
        }
    }
    let _ = cli::run(&b.ns, &["flush"]);
    let md = format!(
        "### Classifier A/B: this build against a baseline object, ns/packet by \
         BPF_PROG_TEST_RUN ({} different packets per measurement, each run once; median \
         (min–max) of {} rounds; the ratio is taken within each round; one hot packet: the \
         first frame 1,000 times per call in the kernel's loop, 16 calls a round)\n\n{}",
        b.packets,
        b.rounds,
        table.markdown()
    );
    println!("{md}");
    b.write_results("classify-ab", &md, json!({ "rows": rows }));
    Ok(())
}

/// A program, the frames it runs and whether its marks are checked.
type Case<'a> = (&'a SchedClassifier, &'a [(Vec<u8>, u32)], bool);

/// Runs every case, `rounds` times, in an order that rotates each round; ns per packet of
/// each case, round by round.
fn interleaved(
    rng: &mut StdRng,
    rounds: usize,
    cases: &[Case],
    looped: bool,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let n = cases.len();
    let mut samples = vec![Vec::new(); n];
    let mut order: Vec<usize> = (0..cases[0].1.len()).collect();
    for round in 0..rounds {
        order.shuffle(rng);
        for k in 0..n {
            let which = (k + round) % n;
            let (prog, frames, check) = cases[which];
            let ns = if looped {
                run_looped(prog, &frames[0], check)?
            } else {
                run_once_each(prog, frames, &order, check)?
            };
            samples[which].push(ns);
        }
    }
    Ok(samples)
}

/// The spread of `a[i] / b[i]`, round by round.
fn ratios(a: &[f64], b: &[f64]) -> Spread {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    Spread::of(&r)
}

/// Misses scan every shape of their family: the worst case, by shape count (1,000 IPv4
/// rules spread over that many destination/source prefix-length combinations).
fn shapes_table(
    b: &mut Bench,
    noop: &SchedClassifier,
) -> anyhow::Result<(Table, Vec<serde_json::Value>)> {
    let mut table = Table::new(&[">shapes", ">ns/packet", ">empty program", ">per shape"]);
    let mut rows = Vec::new();
    for shapes in [1usize, 8, 32, 64] {
        let mut policy = String::from("[attach]\ningress = [\"lan0\"]\n\n");
        for i in 0..1000 {
            let s = i % shapes;
            let dst_len = 32 - (s % 32) as u8;
            let src_len = if s < 32 { 32 } else { 24 };
            let dst = ipnet::Ipv4Net::new(v4_src(i).to_string().parse()?, dst_len)?.trunc();
            let src = ipnet::Ipv4Net::new("192.0.2.0".parse()?, src_len)?.trunc();
            let _ = write!(
                policy,
                "[[rule]]\nname = \"s{i}\"\nproto = \"tcp\"\nsrc = \"{src}\"\ndst = \"{dst}\"\nmark = 1\n\n"
            );
        }
        let (applied, _) = b.apply(&policy)?;
        let frames: Vec<(Vec<u8>, u32)> = (0..b.packets)
            .map(|_| {
                let sport = b.rng.gen_range(1024..65535);
                (
                    frame(TCP, "203.0.113.5", sport, "203.0.113.9", 80).build(),
                    0,
                )
            })
            .collect();
        let (cost, base) = b.measure(&applied, noop, &frames)?;
        let per = (cost.median - base.median) / shapes as f64;
        table.row(vec![
            shapes.to_string(),
            cost.show(1),
            format!("{:.1}", base.median),
            format!("{per:.1}"),
        ]);
        rows.push(
            json!({"shapes": shapes, "ns": cost.json(), "empty_ns": base.json(), "per_shape": per}),
        );
    }
    Ok((table, rows))
}

/// Two gateways on the lone router's uplinks and a 3:1 group of them.
const UPLINKS: &str = "[[gateway]]\nname = \"isp1\"\ndev = \"wan1\"\nvia = \"198.51.100.2\"\n\
    table = 101\nmark = 1\n\n[[gateway]]\nname = \"isp2\"\ndev = \"wan2\"\nvia = \"203.0.113.2\"\n\
    table = 102\nmark = 2\n\n[[group]]\nname = \"wan\"\nmembers = [ { gateway = \"isp1\", weight = 3 }, \
    { gateway = \"isp2\" } ]\n\n";

/// The IPv4 half of [`same_shape_policy`] with each rule's target `target` (a TOML
/// key and value).
fn target_policy(n: usize, target: &str) -> String {
    let mut s = format!("{UPLINKS}[attach]\ningress = [\"lan0\"]\n\n");
    for i in 0..n {
        let _ = write!(
            s,
            "[[rule]]\nname = \"v4-{i}\"\nproto = \"tcp\"\nsrc = \"{}/32\"\ndport = {}\n{target}\n\n",
            v4_src(i),
            port(i)
        );
    }
    s
}

/// Hits at 1,000 IPv4 rules by target: a raw mark, a gateway (its state decides: one more
/// hash lookup), a group (and the flow hash), and a group with a member down (flows
/// placed on a stand-in are recorded, and every packet looks its record up). Each case has
/// a namespace of its own, so all four programs stay loaded and the cases interleave
/// round by round (as in [`attribution`]): the differences are not drift between runs.
fn targets_table(
    b: &mut Bench,
    noop: &SchedClassifier,
) -> anyhow::Result<(Table, Vec<serde_json::Value>)> {
    let n = 1000;
    let cases = [
        ("raw mark", "mark = 1", Some(1)),
        ("gateway", "gateway = \"isp2\"", Some(2)),
        ("group 3:1, all up", "gateway = \"wan\"", None),
        ("group 3:1, isp2 down", "gateway = \"wan\"", Some(1)),
    ];
    let mut routers = Vec::new();
    for (i, (what, target, _)) in cases.iter().enumerate() {
        let ns = lone_router(&format!("target{i}"));
        if what.contains("down") {
            ns.ip("link set wan2 down");
        }
        let prog = apply_in(&ns, &target_policy(n, target))?.0;
        routers.push((ns, prog));
    }
    let frames: Vec<Vec<u8>> = (0..b.packets)
        .map(|_| random_frame(&mut b.rng, n, false, true).0)
        .collect();
    let with_mark = |mark: Option<u32>| -> Vec<(Vec<u8>, u32)> {
        frames
            .iter()
            .map(|f| (f.clone(), mark.unwrap_or(ANY_MARK)))
            .collect()
    };
    let sets: Vec<Vec<(Vec<u8>, u32)>> = cases.iter().map(|c| with_mark(c.2)).collect();
    let mut samples = vec![Vec::new(); cases.len() + 1];
    let mut order: Vec<usize> = (0..frames.len()).collect();
    for round in 0..b.rounds * 2 + 1 {
        order.shuffle(&mut b.rng);
        for k in 0..=cases.len() {
            let case = (k + round) % (cases.len() + 1);
            samples[case].push(match routers.get(case) {
                Some((_, prog)) => run_once_each(prog, &sets[case], &order, true)?,
                None => run_once_each(noop, &sets[0], &order, false)?,
            });
        }
    }
    let names: Vec<&str> = cases.iter().map(|(what, _, _)| *what).collect();
    let (table, rows) = over_empty("target", "target", &names, &samples);
    for (ns, _) in &routers {
        let _ = cli::run(ns, &["flush"]);
    }
    Ok((table, rows))
}

/// Flushes `ns`, applies `policy` with the CLI and returns the classifier it attached to
/// lan0 and how long the apply took.
fn apply_in(ns: &NetNs, policy: &str) -> anyhow::Result<(SchedClassifier, Duration)> {
    cli::ok(ns, &["flush"]);
    let file = TempFile::new("classify.toml", policy);
    let m = measure(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(cli::bin())
            .args(["apply", "-c", file.arg()]),
        Duration::from_secs(600),
    );
    anyhow::ensure!(m.status.success(), "apply failed: {}{}", m.stderr, m.stdout);
    let _inside = ns.enter();
    let (_, progs) = SchedClassifier::query_tcx("lan0", TcAttachType::Ingress)?;
    let info = progs
        .into_iter()
        .find(|p| {
            p.name_as_str()
                .is_some_and(|n| n.starts_with("policyroute"))
        })
        .ok_or_else(|| anyhow::anyhow!("no policyroute program on lan0 after apply"))?;
    Ok((testrun::loaded(info)?, m.wall))
}

/// Sizes of the prefix-set cases (prefixes per family).
const SET_SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

/// A random prefix of `family` in the lower half of its space, of a uniformly drawn length.
fn set_prefix(rng: &mut StdRng, v6: bool) -> ipnet::IpNet {
    if v6 {
        let len = rng.gen_range(1..=128u8);
        let a = rng.gen::<u128>() >> 1;
        ipnet::IpNet::V6(ipnet::Ipv6Net::new(a.into(), len).unwrap().trunc())
    } else {
        let len = rng.gen_range(1..=32u8);
        let a = rng.gen::<u32>() >> 1;
        ipnet::IpNet::V4(ipnet::Ipv4Net::new(a.into(), len).unwrap().trunc())
    }
}

/// `n` prefixes of `family` in the lower half of its space, none inside another (so each
/// one is an entry of the trie: a set that holds a prefix and a shorter one around it needs
/// only the shorter), of lengths drawn uniformly from /16–/32 (IPv4) and /16–/128 (IPv6),
/// where they fit.
fn disjoint_prefixes(rng: &mut StdRng, n: usize, v6: bool) -> Vec<ipnet::IpNet> {
    let mut taken = policyroute_bench::results::Disjoint::default();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let net = if v6 {
            let a = rng.gen::<u128>() >> 1;
            ipnet::IpNet::V6(ipnet::Ipv6Net::new(a.into(), rng.gen_range(16..=128)).unwrap())
        } else {
            let a = rng.gen::<u32>() >> 1;
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(a.into(), rng.gen_range(16..=32)).unwrap())
        }
        .trunc();
        if taken.take(&net) {
            out.push(net);
        }
    }
    out
}

/// An address inside `net`, or (miss) in the upper half of the space.
fn set_address(rng: &mut StdRng, net: &ipnet::IpNet, hit: bool) -> IpAddr {
    match (net, hit) {
        (_, true) => policyroute_tests::random::host_in(rng, net),
        (ipnet::IpNet::V4(_), false) => {
            IpAddr::from(std::net::Ipv4Addr::from(rng.gen::<u32>() | 1 << 31))
        }
        (ipnet::IpNet::V6(_), false) => {
            IpAddr::from(std::net::Ipv6Addr::from(rng.gen::<u128>() | 1 << 127))
        }
    }
}

/// Per-packet cost of big mixed-length sets, alone and with proto and port conditions.
fn sets_table(b: &mut Bench) -> anyhow::Result<(Table, Vec<serde_json::Value>)> {
    // The 1-rule policy the ratios divide by, in a namespace of its own so both programs
    // run in the same rounds: this machine drifts by tens of percent over minutes.
    let reference = lone_router("classify-ref");
    let (one_rule, _) = apply_in(&reference, &same_shape_policy(1))?;
    let table = sets_rows(b, &one_rule);
    let _ = cli::run(&reference, &["flush"]);
    table
}

fn sets_rows(
    b: &mut Bench,
    one_rule: &SchedClassifier,
) -> anyhow::Result<(Table, Vec<serde_json::Value>)> {
    let mut table = Table::new(&[
        "list (prefixes per family)",
        ">apply s",
        ">trie MiB",
        ">in the trie",
        "rule",
        "family",
        "case",
        ">ns/packet",
        ">1 rule, same rounds",
        ">vs 1 rule",
        ">one hot packet: set / 1 rule",
    ]);
    let mut rows = Vec::new();
    let mut lists: Vec<(String, Vec<ipnet::IpNet>)> = SET_SIZES
        .iter()
        .map(|&n| {
            let prefixes = [false, true]
                .into_iter()
                .flat_map(|v6| disjoint_prefixes(&mut b.rng, n, v6))
                .collect();
            (format!("disjoint {n}"), prefixes)
        })
        .collect();
    lists.insert(
        1,
        (
            "country 50k + 37k".into(),
            policyroute_bench::results::country_list(7),
        ),
    );
    // The issue's length mix drawn freely: such a list holds its family's /1 many times
    // over, and the trie keeps only that (what merging nested prefixes saves).
    let uniform = [false, true]
        .into_iter()
        .flat_map(|v6| (0..100_000).map(move |_| v6))
        .map(|v6| set_prefix(&mut b.rng, v6))
        .collect();
    lists.insert(3, ("uniform 100000".into(), uniform));
    // `POLICYROUTE_BENCH_SETS=disjoint 100000` (a list's name): only that list, for quick runs.
    let only = std::env::var("POLICYROUTE_BENCH_SETS").ok();
    lists.retain(|(n, _)| only.as_deref().is_none_or(|o| o == n));
    for (n, prefixes) in lists {
        let list: String = prefixes.iter().map(|p| format!("{p}\n")).collect();
        let list_file = TempFile::new("big.txt", &list);
        let (trie_mib, trie_prefixes) = trie_of(&prefixes);
        for with_ports in [false, true] {
            let name = list_file.path.file_name().unwrap().to_str().unwrap();
            let (conds, what) = if with_ports {
                ("proto = \"tcp\"\ndport = 443\n", "tcp 443 + @big")
            } else {
                ("", "@big")
            };
            let policy = format!(
                "[[set]]\nname = \"big\"\nfile = \"{name}\"\n\n[[rule]]\nname = \"r\"\n{conds}\
                 dst = \"@big\"\nmark = 1\n\n[attach]\ningress = [\"lan0\"]\n"
            );
            eprintln!("classify: set {n}, {what}");
            let (applied, took) = b.apply(&policy)?;
            for v6 in [false, true] {
                let family: Vec<&ipnet::IpNet> = prefixes
                    .iter()
                    .filter(|p| matches!(p, ipnet::IpNet::V6(_)) == v6)
                    .collect();
                for hit in [true, false] {
                    let frames: Vec<(Vec<u8>, u32)> = (0..b.packets)
                        .map(|_| {
                            let net = family.choose(&mut b.rng).unwrap();
                            let dst = set_address(&mut b.rng, net, hit).to_string();
                            let src = if v6 { "2001:db8::5" } else { "192.0.2.5" };
                            let sport = b.rng.gen_range(1024..65535);
                            let f = frame(TCP, src, sport, &dst, 443).build();
                            (f, u32::from(hit))
                        })
                        .collect();
                    let reference: Vec<(Vec<u8>, u32)> = (0..b.packets)
                        .map(|_| random_frame(&mut b.rng, 1, v6, hit))
                        .collect();
                    let cases = [
                        (&applied, &frames[..], true),
                        (one_rule, &reference[..], true),
                    ];
                    let ns = interleaved(&mut b.rng, b.rounds, &cases, false)?;
                    let (cost, base) = (Spread::of(&ns[0]), Spread::of(&ns[1]));
                    let ratio = ratios(&ns[0], &ns[1]);
                    // The same first frames in the kernel's loop: the instructions' share,
                    // with nothing to miss in the caches.
                    let hot = interleaved(&mut b.rng, b.rounds, &cases, true)?;
                    let (hot_set, hot_one) = (Spread::of(&hot[0]), Spread::of(&hot[1]));
                    let family = if v6 { "IPv6" } else { "IPv4" };
                    let case = if hit { "hit" } else { "miss" };
                    table.row(vec![
                        n.clone(),
                        format!("{:.2}", took.as_secs_f64()),
                        format!("{trie_mib:.1}"),
                        trie_prefixes.to_string(),
                        what.into(),
                        family.into(),
                        case.into(),
                        cost.show(1),
                        format!("{:.1}", base.median),
                        format!("{:.2}x ({:.2}–{:.2})", ratio.median, ratio.min, ratio.max),
                        format!("{:.1} / {:.1}", hot_set.median, hot_one.median),
                    ]);
                    rows.push(json!({
                        "prefixes": n, "rule": what, "family": family, "case": case,
                        "apply_s": took.as_secs_f64(), "trie_mib": trie_mib,
                        "trie_prefixes": trie_prefixes,
                        "ns": cost.json(), "one_rule_ns": base.json(),
                        "vs_one_rule": ratio.median, "vs_one_rule_spread": ratio.json(),
                        "hot_ns": hot_set.json(), "hot_one_rule_ns": hot_one.json(),
                    }));
                }
            }
        }
    }
    Ok((table, rows))
}

/// MiB of the trie image the controller builds for `prefixes` (one set, one rule), and
/// the prefixes it holds (a prefix inside another of the set needs no entry).
fn trie_of(prefixes: &[ipnet::IpNet]) -> (f64, usize) {
    use policyroute::policy::{
        matcher::Match,
        sets::{PrefixSet, SetRef},
    };
    let set = std::sync::Arc::new(PrefixSet::new("big".into(), None, prefixes.to_vec()));
    let rule = Rule {
        name: "r".into(),
        matcher: Match {
            dst_set: Some(SetRef::new(set)),
            ..Match::default()
        },
        mark: 1,
    };
    let compiled = policyroute::plan::compile::compile(&[rule], u32::MAX, &Default::default())
        .expect("compiles");
    let node_bytes = policyroute_common::TRIE_NODE_WORDS as f64 * 4.0;
    let held = compiled.classes.fields.values().map(|f| f.prefixes.len());
    (
        compiled.trie.nodes() as f64 * node_bytes / f64::from(1u32 << 20),
        held.sum(),
    )
}
