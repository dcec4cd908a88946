//! `cargo xtask bench e2e`: small-packet UDP forwarded LAN → router → upstream through veth
//! pairs: no policy (baseline); the fwmark ip rules alone with nothing marking (what policy
//! routing costs before classification); and the same policy expressed five ways:
//! policyroute (the real CLI) marking for the fwmark rules, policyroute with
//! `fast_path = true` (the tc program forwards matched packets itself, no ip rules),
//! iptables mangle PREROUTING `-j MARK` rules, an nftables concatenated-key map, and
//! `ip rule` selectors. Two more variants bound what any tc program can reach here: one
//! that redirects every packet to up2 and decides nothing, and the empty program attached
//! (the hook alone). Each setup carries two traffic mixes, measured and reported apart:
//! matched (every flow hits an entry) and unmatched (no flow does). Every variant is first
//! checked to send exactly the expected packets of each mix to each uplink; then
//! repetitions run interleaved (per repetition and mix: A B C D ...) and each is reported
//! as a ratio to the baseline of the same mix and repetition. A load that passes the time
//! cap is stopped and that size (and larger ones) skipped for that variant.
//!
//! `POLICYROUTE_BENCH_SCENARIO=sets` (`cargo xtask bench e2e-sets`) measures a prefix list
//! instead: one list of mixed-length IPv4 prefixes (10,000 and 50,000) routed through isp2
//! by policyroute (`[[set]]`, mark-based and fast path), by nftables (`ip daddr @set`, an
//! interval set) and by iptables with ipset (`-m set`, `hash:net`), with the same traffic.
//!
//! The sender (an AF_PACKET socket in the LAN namespace) runs on CPU 0; receive packet
//! steering sends everything the router receives on lan0 to CPU 1, where the router's
//! forwarding (classification included) and the upstream's receive run in softirq. So the
//! router's CPU is the bottleneck: packets/s is its forwarding capacity, and CPU 1's busy
//! time per packet is what one forwarded packet costs.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use aya::{programs::TcAttachType, Ebpf, EbpfLoader};
use policyroute::kernel::dataplane::classifier_mut;
use policyroute_bench::{
    net::{self, cpu_busy_ns, mac_of, settle, udp_frame, Flow, FrameSender, IpReceived},
    objects::{self as bench_objects, NOOP, REDIRECT, REDIRECT_IFINDEX_GLOBAL, REDIRECT_NH_GLOBAL},
    results::{
        self, entry, env_or, measure, perf_symbols, pin_to_cpu, policy_toml, Spread, Table, MARK,
        SIZES, TABLE,
    },
};
use policyroute_tests::topology::Place;
use policyroute_tests::{cli, fixture::TempFile, netns::NetNs, topology::Topology};
use serde_json::{json, Value};

/// Distinct flows in each traffic mix.
const FLOWS: usize = 1024;
/// The router's CPU (receive packet steering target) and the sender's.
const ROUTER_CPU: usize = 1;
const SENDER_CPU: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Baseline,
    /// The fwmark rules and table 102 the policy variants route with, but nothing marks:
    /// what policy routing costs before any classification.
    Rules,
    Policyroute,
    FastPath,
    Iptables,
    Nftables,
    IpRule,
    /// A tc program that sends every packet to up2 and decides nothing (no parsing, no
    /// lookup): the ceiling of any tc-ingress fast path on this machine.
    Redirect,
    /// The empty tc program attached (every packet goes on to the kernel): what the tc
    /// hook alone costs, the ceiling for unmatched traffic under any tc program.
    Hook,
}

const VARIANTS: [Variant; 9] = [
    Variant::Baseline,
    Variant::Rules,
    Variant::Policyroute,
    Variant::FastPath,
    Variant::Iptables,
    Variant::Nftables,
    Variant::IpRule,
    Variant::Redirect,
    Variant::Hook,
];

/// What the policy is: an entry per flow (address and port), or one prefix list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Exact,
    Sets,
}

static SCENARIO: OnceLock<Scenario> = OnceLock::new();

fn scenario() -> Scenario {
    *SCENARIO.get_or_init(
        || match std::env::var("POLICYROUTE_BENCH_SCENARIO").as_deref() {
            Ok("sets") => Scenario::Sets,
            _ => Scenario::Exact,
        },
    )
}

impl Scenario {
    fn variants(self) -> Vec<Variant> {
        match self {
            Scenario::Exact => VARIANTS.to_vec(),
            // `ip rule` has no sets: a rule per prefix is what the list replaces; the
            // tc ceilings do not depend on the policy, so the exact scenario has them.
            Scenario::Sets => VARIANTS
                .into_iter()
                .filter(|v| !matches!(v, Variant::IpRule | Variant::Redirect | Variant::Hook))
                .collect(),
        }
    }

    /// Results file stem.
    fn results(self) -> &'static str {
        match self {
            Scenario::Exact => "e2e",
            Scenario::Sets => "e2e-sets",
        }
    }

    fn default_sizes(self) -> Vec<usize> {
        match self {
            Scenario::Exact => SIZES.to_vec(),
            Scenario::Sets => vec![10_000, 50_000],
        }
    }
}

/// The documentation prefixes of the list, a partition of 198.18.4.0/22 into 11 prefixes
/// of 9 lengths (/23 to /32): every matched flow's destination is in exactly one.
const LIST_DOC: [&str; 11] = [
    "198.18.4.0/24",
    "198.18.5.0/25",
    "198.18.5.128/26",
    "198.18.5.192/27",
    "198.18.5.224/28",
    "198.18.5.240/29",
    "198.18.5.248/30",
    "198.18.5.252/31",
    "198.18.5.254/32",
    "198.18.5.255/32",
    "198.18.6.0/23",
];

/// A list of `n` prefixes like a country list: the documentation ones and generated ones
/// that no packet is sent to, one per /16 block (so none overlap, as an nftables interval
/// set requires), of lengths /16 to /32.
fn list_prefixes(n: usize) -> Vec<String> {
    let skip = [0u32, 10, 127, 192, 198, 203];
    let blocks = (1u32..224)
        .filter(|a| !skip.contains(a))
        .flat_map(|a| (0u32..256).map(move |b| (a << 24) | (b << 16)));
    let generated = blocks.enumerate().map(|(i, block)| {
        let len = 16 + (i * 7 % 17) as u32;
        let low = (i as u32).wrapping_mul(0x9e37_79b9) & 0xffff;
        let mask = if len == 32 {
            u32::MAX
        } else {
            !(u32::MAX >> len)
        };
        format!("{}/{len}", Ipv4Addr::from((block | low) & mask))
    });
    LIST_DOC
        .iter()
        .map(|s| s.to_string())
        .chain(generated)
        .take(n)
        .collect()
}

impl Variant {
    fn name(self) -> &'static str {
        match (scenario(), self) {
            (Scenario::Sets, Variant::Policyroute) => "policyroute set",
            (Scenario::Sets, Variant::FastPath) => "policyroute set, fast path",
            (Scenario::Sets, Variant::Iptables) => "iptables + ipset hash:net",
            (Scenario::Sets, Variant::Nftables) => "nftables interval set",
            _ => self.exact_name(),
        }
    }

    fn exact_name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline (no policy)",
            Variant::Rules => "fwmark rules only, no marking",
            Variant::Policyroute => "policyroute",
            Variant::FastPath => "policyroute fast path",
            Variant::Iptables => "iptables MARK",
            Variant::Nftables => "nftables map",
            Variant::IpRule => "ip rule selectors",
            Variant::Redirect => "tc redirect only (nothing decided)",
            Variant::Hook => "empty tc program (hook only)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Rules => "rules-only",
            Variant::Policyroute => "policyroute",
            Variant::FastPath => "fast-path",
            Variant::Iptables => "iptables",
            Variant::Nftables => "nftables",
            Variant::IpRule => "iprule",
            Variant::Redirect => "redirect",
            Variant::Hook => "hook",
        }
    }

    /// Whether the variant classifies at all (so matched traffic goes to up2).
    fn routes_policy(self) -> bool {
        !matches!(self, Variant::Baseline | Variant::Rules | Variant::Hook)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// Every flow hits an entry.
    Matched,
    /// No flow hits an entry.
    Unmatched,
}

const MIXES: [Mix; 2] = [Mix::Matched, Mix::Unmatched];

impl Mix {
    fn key(self) -> &'static str {
        match self {
            Mix::Matched => "matched",
            Mix::Unmatched => "unmatched",
        }
    }

    /// Packets of one pass over the flows expected at (up1, up2) under `v`.
    fn expected(self, v: Variant) -> (u64, u64) {
        if v == Variant::Redirect || self == Mix::Matched && v.routes_policy() {
            (0, FLOWS as u64)
        } else {
            (FLOWS as u64, 0)
        }
    }
}

/// Flow `k` of `mix` at `n` entries. Matched flows are spread evenly over the entries;
/// unmatched ones go half to entries' addresses on a port no entry has (so the address
/// alone cannot decide), half to addresses no entry has.
fn flow(mix: Mix, n: usize, k: usize) -> Flow {
    if scenario() == Scenario::Sets {
        return list_flow(mix, k);
    }
    let (dst, dport) = match mix {
        Mix::Matched => entry(k * n / FLOWS),
        Mix::Unmatched if k < FLOWS / 2 => (entry((k * 7919) % n).0, 9_000 + (k % 1000) as u16),
        Mix::Unmatched => (
            Ipv4Addr::new(198, 19, 200, (k % 250) as u8),
            10_000 + k as u16 % 1000,
        ),
    };
    Flow {
        src: Ipv4Addr::new(192, 0, 2, 10),
        sport: 20_000 + ((k * 37) % 40_000) as u16,
        dst,
        dport,
    }
}

/// Flow `k` of `mix` against the prefix list: matched flows go to the 1,024 addresses of
/// 198.18.4.0/22; unmatched ones half to 198.18.8.0/22 (next to it, not listed), half to
/// 198.19.200.0/24.
fn list_flow(mix: Mix, k: usize) -> Flow {
    let dst = match mix {
        Mix::Matched => u32::from(Ipv4Addr::new(198, 18, 4, 0)) + k as u32,
        Mix::Unmatched if k < FLOWS / 2 => u32::from(Ipv4Addr::new(198, 18, 8, 0)) + k as u32,
        Mix::Unmatched => u32::from(Ipv4Addr::new(198, 19, 200, (k % 250) as u8)),
    };
    Flow {
        src: Ipv4Addr::new(192, 0, 2, 10),
        sport: 20_000 + ((k * 37) % 40_000) as u16,
        dst: Ipv4Addr::from(dst),
        dport: 10_000 + (k % 1000) as u16,
    }
}

/// The flows of `mix`, in an order where consecutive packets go to different entries
/// (389 is coprime with 1024, so this is a permutation).
fn flows(mix: Mix, n: usize) -> Vec<Flow> {
    (0..FLOWS)
        .map(|j| flow(mix, n, (j * 389) % FLOWS))
        .collect()
}

/// One traffic mix of one setup: its frames, the marking check, and the repetitions.
struct MixRun {
    mix: Mix,
    frames: Vec<Vec<u8>>,
    verified: Option<(u64, u64, bool)>,
    pps: Vec<f64>,
    cpu_ns: Vec<f64>,
}

struct Setup {
    variant: Variant,
    /// The redirect or hook variant's program, attached while this lives (dropped before
    /// the namespaces).
    _bare: Option<Ebpf>,
    /// Keeps the namespaces alive.
    _topo: Topology,
    load: Option<Duration>,
    skipped: Option<String>,
    up1: IpReceived,
    up2: IpReceived,
    sender: FrameSender,
    /// One per entry of [`MIXES`], in that order.
    mixes: Vec<MixRun>,
}

/// Routing shared by the classic variants, as policyroute installs it: main routes first,
/// then the mark (or, for `ip rule`, the selectors) to table 102 with a default via up2.
fn classic_routing(r: &NetNs, with_fwmark: bool) {
    r.ip("rule add pref 10000 lookup main suppress_prefixlength 0");
    r.ip(&format!("route add default via 203.0.113.2 table {TABLE}"));
    if with_fwmark {
        r.ip(&format!(
            "rule add pref 10001 fwmark {MARK:#x}/0xffffffff lookup {TABLE}"
        ));
    }
}

fn iptables_rules(n: usize) -> String {
    let mut s = String::from("*mangle\n:PREROUTING ACCEPT [0:0]\n");
    for i in 0..n {
        let (dst, port) = entry(i);
        let _ = writeln!(
            s,
            "-A PREROUTING -d {dst}/32 -p udp -m udp --dport {port} -j MARK --set-mark {MARK:#x}"
        );
    }
    s.push_str("COMMIT\n");
    s
}

fn nft_ruleset(n: usize) -> String {
    let mut s = String::from(
        "table ip bench {\n  map m {\n    type ipv4_addr . inet_service : mark\n    elements = {\n",
    );
    for i in 0..n {
        let (dst, port) = entry(i);
        let sep = if i + 1 < n { "," } else { "" };
        let _ = writeln!(s, "      {dst} . {port} : {MARK:#x}{sep}");
    }
    s.push_str(
        "    }\n  }\n  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n    meta mark set ip daddr . udp dport map @m\n  }\n}\n",
    );
    s
}

fn ip_rule_batch(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let (dst, port) = entry(i);
        let _ = writeln!(
            s,
            "rule add pref 10001 to {dst}/32 ipproto udp dport {port} lookup {TABLE}"
        );
    }
    s
}

/// policyroute: a set read from a list file, one rule through isp2.
fn set_policy(n: usize, fast_path: bool) -> (String, TempFile) {
    let list = TempFile::new("list.txt", &(list_prefixes(n).join("\n") + "\n"));
    let name = list.path.file_name().unwrap().to_str().unwrap().to_owned();
    let fast = if fast_path { "fast_path = true\n" } else { "" };
    let policy = format!(
        "{fast}[[gateway]]\nname = \"isp2\"\ndev = \"wan2\"\nvia = \"203.0.113.2\"\n\
         table = {TABLE}\nmark = {MARK}\n\n[attach]\ningress = [\"lan0\"]\n\n\
         [[set]]\nname = \"list\"\nfile = \"{name}\"\n\n\
         [[rule]]\nname = \"to-list\"\nproto = \"udp\"\ndst = \"@list\"\ngateway = \"isp2\"\n"
    );
    (policy, list)
}

/// nftables: the list as an interval set, matched in prerouting (`list` is a keyword of
/// nft's grammar, so the set is `dsts`, in ipset too).
fn nft_set_ruleset(n: usize) -> String {
    format!(
        "table ip bench {{\n  set dsts {{\n    type ipv4_addr\n    flags interval\n    \
         elements = {{ {} }}\n  }}\n  chain prerouting {{\n    type filter hook prerouting \
         priority mangle; policy accept;\n    meta l4proto udp ip daddr @dsts meta mark set \
         {MARK:#x}\n  }}\n}}\n",
        list_prefixes(n).join(", ")
    )
}

/// ipset: the list as a hash:net set; then one iptables rule matches it.
fn ipset_restore(n: usize) -> String {
    let mut s = format!(
        "create dsts hash:net family inet maxelem {}\n",
        (n * 2).max(65536)
    );
    for p in list_prefixes(n) {
        let _ = writeln!(s, "add dsts {p}");
    }
    s
}

/// Loads variant `v` at `n` entries into the router; returns the load time or why it was
/// skipped.
fn load(v: Variant, r: &NetNs, n: usize, cap: Duration) -> Result<Option<Duration>, String> {
    if scenario() == Scenario::Sets {
        return load_list(v, r, n, cap);
    }
    let ns_exec = |args: &[&str]| ns_command(r, args);
    let (mut cmd, file) = match v {
        Variant::Baseline => return Ok(None),
        Variant::Rules => {
            classic_routing(r, true);
            return Ok(None);
        }
        Variant::Policyroute | Variant::FastPath => {
            let mut policy = policy_toml(n, None);
            if v == Variant::FastPath {
                policy.insert_str(0, "fast_path = true\n");
            }
            let f = TempFile::new("policy.toml", &policy);
            let bin = cli::bin();
            (ns_exec(&[bin.to_str().unwrap(), "apply", "-c", f.arg()]), f)
        }
        Variant::Iptables => {
            classic_routing(r, true);
            let f = TempFile::new("iptables.rules", &iptables_rules(n));
            (ns_exec(&["iptables-restore", f.arg()]), f)
        }
        Variant::Nftables => {
            classic_routing(r, true);
            let f = TempFile::new("ruleset.nft", &nft_ruleset(n));
            (ns_exec(&["nft", "-f", f.arg()]), f)
        }
        Variant::IpRule => {
            classic_routing(r, false);
            let f = TempFile::new("ip-rule.batch", &ip_rule_batch(n));
            (ns_exec(&["ip", "-batch", f.arg()]), f)
        }
        // Attached by `setup`: the bench process holds its link.
        Variant::Redirect | Variant::Hook => return Ok(None),
    };
    let loaded = timed_load(v, &mut cmd, cap);
    drop(file);
    loaded
}

/// [`load`] of the prefix-list scenario.
fn load_list(v: Variant, r: &NetNs, n: usize, cap: Duration) -> Result<Option<Duration>, String> {
    let ns_exec = |args: &[&str]| ns_command(r, args);
    let (mut cmd, files) = match v {
        Variant::Baseline | Variant::IpRule | Variant::Redirect | Variant::Hook => return Ok(None),
        Variant::Rules => {
            classic_routing(r, true);
            return Ok(None);
        }
        Variant::Policyroute | Variant::FastPath => {
            let (policy, list) = set_policy(n, v == Variant::FastPath);
            let f = TempFile::new("policy.toml", &policy);
            let bin = cli::bin();
            (
                ns_exec(&[bin.to_str().unwrap(), "apply", "-c", f.arg()]),
                vec![f, list],
            )
        }
        Variant::Iptables => {
            classic_routing(r, true);
            let f = TempFile::new("ipset.restore", &ipset_restore(n));
            let script = format!(
                "ipset restore < {} && iptables -t mangle -A PREROUTING -p udp -m set \
                 --match-set dsts dst -j MARK --set-mark {MARK:#x}",
                f.arg()
            );
            (ns_exec(&["sh", "-c", &script]), vec![f])
        }
        Variant::Nftables => {
            classic_routing(r, true);
            let f = TempFile::new("ruleset.nft", &nft_set_ruleset(n));
            (ns_exec(&["nft", "-f", f.arg()]), vec![f])
        }
    };
    let loaded = timed_load(v, &mut cmd, cap);
    drop(files);
    loaded
}

/// `args` run in `r` (`ip netns exec`).
fn ns_command(r: &NetNs, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &r.name]).args(args);
    c
}

/// Runs a variant's load command; its wall time, or why it was skipped (over the cap). A
/// failed load stops the benchmark.
fn timed_load(v: Variant, cmd: &mut Command, cap: Duration) -> Result<Option<Duration>, String> {
    let m = measure(cmd, cap);
    if m.timed_out {
        return Err(format!("loading took over the {} s cap", cap.as_secs()));
    }
    if !m.status.success() {
        panic!("{} load failed: {}{}", v.name(), m.stderr, m.stdout);
    }
    Ok(Some(m.wall))
}

/// The router sends all it receives on lan0 to one CPU (receive packet steering); the
/// upstreams take packets through veth NAPI (GRO on), so what the router forwards never
/// competes with its input for CPU 1's backlog queue, and drop them with a blackhole route
/// after counting (`Ip: InReceives`).
fn prepare(t: &Topology) {
    t.router.exec(
        "sh",
        &[
            "-c",
            &format!(
                "echo {:x} > /sys/class/net/lan0/queues/rx-0/rps_cpus",
                1u32 << ROUTER_CPU
            ),
        ],
    );
    for up in [&t.up1, &t.up2] {
        up.exec("ethtool", &["-K", "eth0", "gro", "on"]);
        up.ip("route add blackhole 198.18.0.0/15");
    }
}

fn setup(v: Variant, n: usize, cap: Duration, skip: Option<String>) -> Setup {
    let topo = Topology::new(&format!("e2e-{}", v.key()));
    prepare(&topo);
    let (load, skipped) = match skip {
        Some(why) => (None, Some(why)),
        None => match load(v, &topo.router, n, cap) {
            Ok(d) => (d, None),
            Err(why) => (None, Some(why)),
        },
    };
    let bare = match skipped {
        None => attach_bare(v, &topo.router).expect("the bench's tc program loads and attaches"),
        Some(_) => None,
    };
    let dst_mac = mac_of(&topo.router, "lan0");
    let src_mac = mac_of(&topo.lan, "eth0");
    let mixes = MIXES
        .iter()
        .map(|&mix| MixRun {
            mix,
            frames: flows(mix, n)
                .iter()
                .map(|f| udp_frame(dst_mac, src_mac, f))
                .collect(),
            verified: None,
            pps: Vec::new(),
            cpu_ns: Vec::new(),
        })
        .collect();
    Setup {
        variant: v,
        up1: IpReceived::new(&topo.up1),
        up2: IpReceived::new(&topo.up2),
        sender: FrameSender::new(&topo.lan, "eth0"),
        _bare: bare,
        _topo: topo,
        load,
        skipped,
        mixes,
    }
}

/// The bench-only tc program of `v` (redirect or hook), attached at the router's lan0
/// ingress (tcx) while the returned object lives; None for every other variant.
fn attach_bare(v: Variant, r: &NetNs) -> anyhow::Result<Option<Ebpf>> {
    let (bytes, name) = match v {
        Variant::Redirect => (bench_objects::redirect(), REDIRECT),
        Variant::Hook => (bench_objects::noop(), NOOP),
        _ => return Ok(None),
    };
    let _inside = r.enter();
    let next_hop = match v {
        Variant::Redirect => Some(up2_next_hop()?),
        _ => None,
    };
    let mut loader = EbpfLoader::new();
    if let Some((ifindex, nh)) = &next_hop {
        loader
            .override_global(REDIRECT_IFINDEX_GLOBAL, ifindex, true)
            .override_global(REDIRECT_NH_GLOBAL, nh, true);
    }
    let mut obj = loader.load(bytes)?;
    let prog = classifier_mut(&mut obj, name)?;
    prog.load()?;
    prog.attach("lan0", TcAttachType::Ingress)?;
    Ok(Some(obj))
}

/// The router's device towards up2 (ifindex, in the namespace the caller entered) and up2's
/// IPv4 address in network byte order: where the redirect program sends everything.
fn up2_next_hop() -> anyhow::Result<(u32, u32)> {
    let ifindex = net::ifindex(Place::Up2.dev());
    anyhow::ensure!(ifindex != 0, "no {} in the router", Place::Up2.dev());
    let via: Ipv4Addr = Place::Up2.via(false).parse()?;
    Ok((ifindex, u32::from_ne_bytes(via.octets())))
}

/// Sends every flow of mix `m` once, batch by batch, each batch only after the previous one
/// arrived (no drops); returns what reached up1 (main table) and up2 (table 102).
fn verify(s: &mut Setup, m: usize) -> (u64, u64) {
    let (a0, b0) = (s.up1.get(), s.up2.get());
    let (up1, up2) = (&mut s.up1, &mut s.up2);
    s.sender.send_each(&s.mixes[m].frames, |sent| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while up1.get() + up2.get() - a0 - b0 < sent as u64 && Instant::now() < deadline {
            std::thread::yield_now();
        }
    });
    // Stragglers (or packets nobody expected) show up in the counts below.
    settle(
        || up1.get() + up2.get(),
        Duration::from_millis(20),
        Duration::from_secs(5),
    );
    (s.up1.get() - a0, s.up2.get() - b0)
}

/// One timed repetition of mix `m`: returns (packets/s forwarded, CPU ns per packet on the
/// router CPU), both over the sending window only; then waits until the router's queue has
/// drained so the next measurement starts clean.
fn blast(s: &mut Setup, m: usize, run: Duration) -> (f64, f64) {
    let before = s.up1.get() + s.up2.get();
    let cpu0 = cpu_busy_ns(ROUTER_CPU);
    let (_sent, elapsed) = s.sender.blast(&s.mixes[m].frames, run);
    let at_stop = s.up1.get() + s.up2.get();
    let cpu1 = cpu_busy_ns(ROUTER_CPU);
    let received = (at_stop - before).max(1);
    // Drained when nothing arrives for ten packet times (at least 20 ms).
    let per_packet = elapsed / received as u32;
    let quiet = (per_packet * 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let (up1, up2) = (&mut s.up1, &mut s.up2);
    settle(|| up1.get() + up2.get(), quiet, Duration::from_secs(30));
    (
        received as f64 / elapsed.as_secs_f64(),
        (cpu1 - cpu0) as f64 / received as f64,
    )
}

/// Profiles the router CPU (`perf record -C 1 -e cpu-clock -g`) while `s` forwards mix `m`
/// at full rate; returns the top self-time symbols, or None without a usable perf.
fn profile(s: &mut Setup, m: usize, run: Duration) -> Option<Vec<String>> {
    let data = TempFile::new("e2e.perf", "");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-g", "-e", "cpu-clock", "-C"])
        .arg(ROUTER_CPU.to_string())
        .arg("-o")
        .arg(&data.path)
        .args(["--", "sleep"])
        .arg(format!("{:.3}", run.as_secs_f64()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    blast(s, m, run + Duration::from_millis(300));
    let ok = perf.wait().ok()?.success();
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data.path)
        .output()
        .ok()?;
    ok.then(|| perf_symbols(&report.stdout, |_| true))
}

struct Config {
    reps: usize,
    run: Duration,
    cap: Duration,
    sizes: Vec<usize>,
}

impl Config {
    fn from_env() -> Config {
        Config {
            reps: env_or("POLICYROUTE_BENCH_REPS", 7),
            run: Duration::from_millis(env_or("POLICYROUTE_BENCH_RUN_MS", 1500)),
            cap: Duration::from_secs(env_or("POLICYROUTE_BENCH_LOAD_CAP", 150)),
            sizes: std::env::var("POLICYROUTE_BENCH_SIZES")
                .ok()
                .map(|v| v.split(',').map(|x| x.trim().parse().unwrap()).collect())
                .unwrap_or_else(|| scenario().default_sizes()),
        }
    }
}

/// The size the end-to-end targets are judged at; the router CPU is profiled there.
const PROFILE_SIZE: usize = 10_000;
/// The mix profiles run on: the one where the variants differ in what they do per packet.
const PROFILE_MIX: Mix = Mix::Matched;

/// What the run found, turned into tables and JSON at the end.
struct Results {
    verify_table: Table,
    table: Table,
    rows: Vec<Value>,
    profiles: Vec<(usize, Variant, Mix, Vec<String>)>,
}

impl Results {
    fn new() -> Results {
        Results {
            verify_table: Table::new(&[
                ">entries",
                "mix",
                "variant",
                ">to up1 (main)",
                ">to up2 (table 102)",
                ">expected up1/up2",
                "same marking",
            ]),
            table: Table::new(&[
                ">entries",
                "mix",
                "variant",
                ">load s",
                ">kpps median (min–max)",
                ">pps / baseline",
                ">router CPU ns/packet",
                ">CPU / baseline",
            ]),
            rows: Vec::new(),
            profiles: Vec::new(),
        }
    }
}

/// Every variant's setup at `n` entries; a variant that exceeded the load cap at a smaller
/// size is skipped (and recorded in `exceeded` when it does so now).
fn setups_at(n: usize, cap: Duration, exceeded: &mut Vec<Variant>) -> Vec<Setup> {
    let setups: Vec<Setup> = scenario()
        .variants()
        .into_iter()
        .map(|v| {
            let skip = exceeded
                .contains(&v)
                .then(|| "a smaller size already exceeded the load cap".to_string());
            eprintln!("e2e: {n} entries: setting up {}", v.name());
            let s = setup(v, n, cap, skip);
            if let Some(why) = &s.skipped {
                eprintln!("e2e: {n} entries: {} skipped: {why}", v.name());
            }
            s
        })
        .collect();
    for s in &setups {
        if s.skipped.is_some() && !exceeded.contains(&s.variant) {
            exceeded.push(s.variant);
        }
    }
    setups
}

fn live(setups: &mut [Setup]) -> impl Iterator<Item = &mut Setup> {
    setups.iter_mut().filter(|s| s.skipped.is_none())
}

/// The marking check: every variant, every mix, each flow once.
fn verify_all(n: usize, setups: &mut [Setup], res: &mut Results) {
    for (m, mix) in MIXES.iter().enumerate() {
        for s in live(setups) {
            let (up1, up2) = verify(s, m);
            let expect = mix.expected(s.variant);
            let ok = (up1, up2) == expect;
            eprintln!(
                "e2e: {n} entries, {}: {} verified: up1 {up1} up2 {up2} (expected {expect:?})",
                mix.key(),
                s.variant.name()
            );
            s.mixes[m].verified = Some((up1, up2, ok));
            res.verify_table.row(vec![
                n.to_string(),
                mix.key().into(),
                s.variant.name().into(),
                up1.to_string(),
                up2.to_string(),
                format!("{}/{}", expect.0, expect.1),
                if ok { "yes" } else { "**NO**" }.into(),
            ]);
        }
    }
}

/// The timed repetitions, interleaved: per repetition and mix, every variant once in turn,
/// so slow drifts of the machine hit all variants alike.
fn measure_reps(n: usize, setups: &mut [Setup], cfg: &Config) {
    for rep in 0..cfg.reps {
        for (m, mix) in MIXES.iter().enumerate() {
            let mut line = Vec::new();
            for s in live(setups) {
                let (pps, cpu) = blast(s, m, cfg.run);
                s.mixes[m].pps.push(pps);
                s.mixes[m].cpu_ns.push(cpu);
                line.push(format!("{} {:.0} kpps", s.variant.key(), pps / 1e3));
            }
            eprintln!(
                "e2e: {n} entries, {}: rep {}/{}: {}",
                mix.key(),
                rep + 1,
                cfg.reps,
                line.join(", ")
            );
        }
    }
}

/// Router CPU profiles of the variants whose cost per packet is worth reading (iptables
/// and ip rule selectors grow linearly and are explained by their load alone).
fn profile_all(n: usize, setups: &mut [Setup], run: Duration, res: &mut Results) {
    let m = MIXES.iter().position(|&x| x == PROFILE_MIX).unwrap();
    for s in live(setups).filter(|s| !matches!(s.variant, Variant::Iptables | Variant::IpRule)) {
        eprintln!(
            "e2e: {n} entries: profiling the router CPU under {}, {} traffic",
            s.variant.name(),
            PROFILE_MIX.key()
        );
        if let Some(top) = profile(s, m, run) {
            res.profiles.push((n, s.variant, PROFILE_MIX, top));
        }
    }
}

/// The table row and JSON row of one variant and mix; ratios are to `base` (the baseline's
/// run of the same mix), repetition by repetition.
fn add_row(n: usize, s: &Setup, run: &MixRun, base: &MixRun, res: &mut Results) {
    let ratio: Vec<f64> = run.pps.iter().zip(&base.pps).map(|(a, b)| a / b).collect();
    let cpu_ratio: Vec<f64> = run
        .cpu_ns
        .iter()
        .zip(&base.cpu_ns)
        .map(|(a, b)| a / b)
        .collect();
    let kpps: Vec<f64> = run.pps.iter().map(|p| p / 1e3).collect();
    let (pps, ratio, cpu, cpu_ratio) = (
        Spread::of(&kpps),
        Spread::of(&ratio),
        Spread::of(&run.cpu_ns),
        Spread::of(&cpu_ratio),
    );
    let load = s.load.map(|d| d.as_secs_f64());
    res.table.row(vec![
        n.to_string(),
        run.mix.key().into(),
        s.variant.name().into(),
        load.map_or("–".into(), |l| format!("{l:.2}")),
        pps.show(0),
        ratio.show(3),
        cpu.show(0),
        cpu_ratio.show(3),
    ]);
    res.rows.push(json!({
        "entries": n,
        "mix": run.mix.key(),
        "variant": s.variant.key(),
        "load_s": load,
        "kpps": pps.json(),
        "ratio": ratio.json(),
        "cpu_ns": cpu.json(),
        "cpu_ratio": cpu_ratio.json(),
        "verified": run.verified.map(|v| v.2),
    }));
}

fn add_skipped(n: usize, mix: Mix, s: &Setup, why: &str, res: &mut Results) {
    res.table.row(vec![
        n.to_string(),
        mix.key().into(),
        s.variant.name().into(),
        "–".into(),
        format!("skipped: {why}"),
        "–".into(),
        "–".into(),
        "–".into(),
    ]);
    res.rows.push(json!({
        "entries": n, "mix": mix.key(), "variant": s.variant.key(), "skipped": why,
    }));
}

fn add_rows(n: usize, setups: &[Setup], res: &mut Results) {
    for (m, &mix) in MIXES.iter().enumerate() {
        let base = &setups[0].mixes[m];
        for s in setups {
            match &s.skipped {
                Some(why) => add_skipped(n, mix, s, why, res),
                None => add_row(n, s, &s.mixes[m], base, res),
            }
        }
    }
}

fn markdown(res: &Results, cfg: &Config, env: &Value) -> String {
    let backend = env["iptables"].as_str().unwrap_or("");
    let mut md = format!(
        "### End to end{}: UDP forwarding LAN → router → upstream ({} reps × {} ms per mix, \
         interleaved)\n\n\
         Marking check (each of the {FLOWS} flows of a mix sent once; matched: every flow hits \
         an entry → table 102 (or the fast path) → up2; unmatched: none does → main → \
         up1):\n\n{}\n\
         Throughput and router CPU per packet (median (min–max) over repetitions; ratios are \
         to the baseline of the same mix and repetition; iptables: `{backend}`):\n\n{}",
        match scenario() {
            Scenario::Exact => "",
            Scenario::Sets => {
                ", a prefix list (one set of mixed-length IPv4 prefixes, /16 to /32, the \
                 entries column is its size)"
            }
        },
        cfg.reps,
        cfg.run.as_millis(),
        res.verify_table.markdown(),
        res.table.markdown()
    );
    for (n, v, mix, top) in &res.profiles {
        let _ = write!(
            md,
            "\nRouter CPU profile, {} at {n} entries, {} traffic (`perf record -C {ROUTER_CPU} \
             -e cpu-clock`, self time, top symbols; full lists in `{}-perf.txt`):\n\n```\n{}\n```\n",
            v.name(),
            mix.key(),
            scenario().results(),
            top.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    md
}

fn write_all(res: &Results, cfg: &Config, env: Value) {
    let full: String = res
        .profiles
        .iter()
        .map(|(n, v, mix, top)| {
            format!(
                "## {} at {n} entries, {} traffic\n\n{}\n\n",
                v.name(),
                mix.key(),
                top.join("\n")
            )
        })
        .collect();
    if !full.is_empty() {
        results::write_result(&format!("{}-perf.txt", scenario().results()), &full);
    }
    let md = markdown(res, cfg, &env);
    let profiles: Vec<Value> = res.profiles.iter()
        .map(|(n, v, mix, top)| {
            json!({"entries": n, "variant": v.key(), "mix": mix.key(), "top": top})
        })
        .collect();
    results::write_results(
        scenario().results(),
        &md,
        &json!({
            "environment": env,
            "reps": cfg.reps,
            "run_ms": cfg.run.as_millis() as u64,
            "load_cap_s": cfg.cap.as_secs(),
            "flows": FLOWS,
            "mixes": MIXES.iter().map(|m| m.key()).collect::<Vec<_>>(),
            "rows": res.rows,
            "profiles": profiles,
        }),
    );
}

fn main() {
    let cfg = Config::from_env();
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) > ROUTER_CPU,
        "needs at least 2 CPUs"
    );
    // Read before pinning: the machine's core count, not the one CPU left to this process.
    let env = results::environment();
    // The whole process (sender included) and the tools it starts stay off the router CPU.
    pin_to_cpu(SENDER_CPU);
    eprintln!(
        "e2e: {} reps x {} ms per variant, mix and size, load cap {} s",
        cfg.reps,
        cfg.run.as_millis(),
        cfg.cap.as_secs()
    );
    let mut res = Results::new();
    let mut exceeded: Vec<Variant> = Vec::new();
    for &n in &cfg.sizes {
        let mut setups = setups_at(n, cfg.cap, &mut exceeded);
        verify_all(n, &mut setups, &mut res);
        measure_reps(n, &mut setups, &cfg);
        if n == PROFILE_SIZE {
            profile_all(n, &mut setups, cfg.run, &mut res);
        }
        add_rows(n, &setups, &mut res);
    }
    write_all(&res, &cfg, env);
}
