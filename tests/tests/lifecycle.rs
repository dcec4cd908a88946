//! apply / status / flush lifecycle: idempotence, reconciliation, dry runs, invalid
//! policies, crashes, concurrency, privileges and namespace isolation. Every kernel object
//! is checked with independent tools (`ip`, `bpftool`) as well as through `status`.
use policyroute_tests::{
    cli,
    fixture::{self, lone_router, without_rule, TempFile, GATEWAY_ISP2, RULES_WEB_DNS},
    topology::{Place, Topology, LAN_HOST},
};

/// The standard gateway and a second, point-to-point one (no `via`), under a mark mask.
fn base() -> String {
    format!(
        r#"mark_mask = 0xff00
{GATEWAY_ISP2}
[[gateway]]
name = "p2p"
dev = "wan1"
table = 101

[[rule]]
name = "web"
proto = "tcp"
dport = [80, 443]
gateway = "isp2"

[[rule]]
name = "ssh"
proto = "tcp"
dport = 22
gateway = "p2p"

[[rule]]
name = "dns"
proto = "udp"
dport = "53-54"
gateway = "isp2"

[attach]
ingress = ["lan0"]
"#
    )
}

#[test]
fn apply_is_idempotent_and_flush_removes_everything() {
    let ns = lone_router("idem");
    let policy = TempFile::new("idem.toml", &base());
    assert!(cli::owned_objects(&ns).is_empty());
    cli::ok(&ns, &["apply", "-c", policy.arg()]);
    let first = cli::owned_objects(&ns);
    // 2 suppress rules, 3 fwmark rules (isp2 v4+v6, p2p v4+v6 = 4), 4 routes, 1 hook.
    assert_eq!(first.len(), 2 + 4 + 4 + 1, "{first:#?}");
    let again = cli::json(&ns, &["apply", "-c", policy.arg()]);
    assert_eq!(again["entries"]["inserted"], 0);
    assert!(again["ip_rules"]["add"].as_array().unwrap().is_empty());
    assert!(again["attach"].as_array().unwrap().is_empty());
    assert_eq!(
        cli::owned_objects(&ns),
        first,
        "a second apply changes nothing"
    );
    let marks = ns.ip("rule show");
    assert!(
        marks.contains("fwmark 0x100/0xff00 lookup 100 proto 211"),
        "{marks}"
    );
    assert!(
        marks.contains("lookup main suppress_prefixlength 0 proto 211"),
        "{marks}"
    );
    let p2p = ns.ip("route show table 101");
    assert!(p2p.contains("default dev wan1 proto 211"), "{p2p}");
    cli::ok(&ns, &["flush"]);
    assert!(cli::owned_objects(&ns).is_empty());
    cli::ok(&ns, &["flush"]);
}

#[test]
fn dry_run_changes_nothing() {
    let ns = lone_router("dry");
    let policy = TempFile::new("dry.toml", &base());
    let plan = cli::json(&ns, &["apply", "-c", policy.arg(), "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    let hook = plan["attach"][0].as_str().unwrap_or_default();
    assert!(hook.ends_with(" ingress of lan0"), "{plan}");
    assert_eq!(plan["routes"]["add"].as_array().unwrap().len(), 4);
    assert!(cli::owned_objects(&ns).is_empty());
}

#[test]
fn foreign_rules_and_routes_are_left_alone() {
    let ns = lone_router("foreign");
    // A table no gateway has: not in the policy's way.
    ns.ip("route add default via 203.0.113.9 table 555");
    let policy = TempFile::new("foreign.toml", &base());
    cli::ok(&ns, &["apply", "-c", policy.arg()]);
    // isp2's own rule in all but its protocol. (Before an apply, it is refused as in the
    // way: tests/tests/foreign_state.rs.)
    ns.ip("rule add fwmark 0x100/0xff00 lookup 100 priority 10001");
    cli::ok(&ns, &["flush"]);
    let rules = ns.ip("rule show");
    assert!(
        rules.contains("10001:\tfrom all fwmark 0x100/0xff00 lookup 100"),
        "{rules}"
    );
    assert!(ns.ip("route show table 555").contains("203.0.113.9"));
}

#[test]
fn invalid_policies_change_nothing() {
    let ns = lone_router("invalid");
    let good = TempFile::new("good.toml", &base());
    cli::ok(&ns, &["apply", "-c", good.arg()]);
    let before = cli::owned_objects(&ns);
    let status_before = cli::json(&ns, &["status"])["rules"].clone();
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key",
            "[[gateway]]\nname='a'\ndev='wan2'\ntable=100\ncolour='red'\n",
            ":5:",
        ),
        (
            "missing device",
            "[[gateway]]\nname='a'\ndev='nope0'\ntable=100\n",
            "does not exist",
        ),
        (
            "reserved table",
            "[[gateway]]\nname='a'\ndev='wan2'\ntable=254\n",
            ":4:",
        ),
        (
            "unknown gateway",
            "[[rule]]\nproto='tcp'\ngateway='zzz'\n",
            ":3:",
        ),
        ("host bits", "[[rule]]\nsrc='192.0.2.1/24'\nmark=1\n", ":2:"),
        (
            "empty range",
            "[[rule]]\nproto='tcp'\ndport='90-80'\nmark=1\n",
            ":3:",
        ),
        (
            "ports without ports",
            "[[rule]]\nproto='icmp'\ndport=1\nmark=1\n",
            "[[rule]]",
        ),
        (
            "both targets",
            "[[gateway]]\nname='a'\ndev='wan2'\ntable=100\n[[rule]]\ngateway='a'\nmark=1\n",
            "rule",
        ),
        (
            "mark outside mask",
            "mark_mask=0xff\n[[gateway]]\nname='a'\ndev='wan2'\ntable=100\nmark=0x100\n",
            ":6:",
        ),
        (
            "undefined table name",
            "[[gateway]]\nname='a'\ndev='wan2'\ntable='nosuch'\n",
            ":4:",
        ),
        ("syntax", "[[rule]\n", ":1:"),
    ];
    for (what, text, needle) in cases {
        let f = TempFile::new("bad.toml", text);
        let out = cli::run(&ns, &["apply", "-c", f.arg()]);
        assert!(!out.status.success(), "{what}: apply succeeded");
        let needle = if needle.starts_with('[') {
            "bad.toml"
        } else {
            needle
        };
        assert!(
            out.stderr.contains("bad.toml") && out.stderr.contains(needle),
            "{what}: {}",
            out.stderr
        );
        assert_eq!(cli::owned_objects(&ns), before, "{what}: kernel changed");
    }
    assert_eq!(cli::json(&ns, &["status"])["rules"], status_before);
}

#[test]
fn reapply_reconciles_and_keeps_counters() {
    let t = Topology::new("recon");
    cli::apply(&t.router, &recon_policy(true));
    assert_eq!(
        t.udp(LAN_HOST, 7001, "198.18.0.1", 53).map(|a| a.at),
        Some(Place::Up2)
    );
    assert_eq!(
        t.tcp(LAN_HOST, 7002, "198.18.0.1", 80).map(|a| a.at),
        Some(Place::Up2)
    );
    let dns_before = cli::packets(&t.router, "dns");
    assert!(dns_before >= 1);
    let hook_before = cli::json(&t.router, &["status"])["hooks"][0]["program_id"].clone();
    let web_removed = TempFile::new("dns-only.toml", &recon_policy(false));
    let report = cli::json(&t.router, &["apply", "-c", web_removed.arg()]);
    assert!(report["entries"]["removed"].as_u64().unwrap() >= 1);
    let status = cli::json(&t.router, &["status"]);
    let names: Vec<&str> = status["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dns"]);
    assert_eq!(
        status["hooks"][0]["program_id"], hook_before,
        "maps updated in place, program kept"
    );
    assert_eq!(
        t.tcp(LAN_HOST, 7003, "198.18.0.1", 80).map(|a| a.at),
        Some(Place::Up1),
        "web rule gone"
    );
    assert_eq!(
        t.udp(LAN_HOST, 7004, "198.18.0.1", 53).map(|a| a.at),
        Some(Place::Up2)
    );
    assert!(
        cli::packets(&t.router, "dns") > dns_before,
        "dns kept counting"
    );
}

/// The reconciliation test's policy: web and dns, or dns alone.
fn recon_policy(web: bool) -> String {
    let rules = if web {
        RULES_WEB_DNS.to_string()
    } else {
        without_rule(RULES_WEB_DNS, "web")
    };
    fixture::policy(GATEWAY_ISP2, &[&rules], "ingress = [\"lan0\"]\n")
}

#[test]
fn namespaces_do_not_interfere() {
    let a = lone_router("nsa");
    let b = lone_router("nsb");
    let pa = TempFile::new("a.toml", &base());
    let pb = TempFile::new(
        "b.toml",
        &base().replace("name = \"ssh\"", "name = \"ssh-b\""),
    );
    cli::ok(&a, &["apply", "-c", pa.arg()]);
    cli::ok(&b, &["apply", "-c", pb.arg()]);
    let sa = cli::json(&a, &["status"]);
    let sb = cli::json(&b, &["status"]);
    assert_eq!(sa["rules"][1]["name"], "ssh");
    assert_eq!(sb["rules"][1]["name"], "ssh-b");
    assert_ne!(sa["hooks"][0]["program_id"], sb["hooks"][0]["program_id"]);
    let b_objects = cli::owned_objects(&b);
    cli::ok(&a, &["flush"]);
    assert!(cli::owned_objects(&a).is_empty());
    assert_eq!(cli::owned_objects(&b), b_objects, "flush in a left b alone");
    assert_eq!(cli::json(&b, &["status"])["rules"][1]["name"], "ssh-b");
}

#[test]
fn an_apply_killed_at_any_step_is_repaired_and_flushable() {
    let clean = lone_router("crash-ref");
    let policy = TempFile::new("crash.toml", &base());
    cli::ok(&clean, &["apply", "-c", policy.arg()]);
    let want = cli::owned_objects(&clean).len();
    for step in ["maps", "record", "routes", "rules", "attach"] {
        let ns = lone_router(&format!("crash-{step}"));
        let out = cli::run_env(
            &ns,
            &["apply", "-c", policy.arg()],
            &[("POLICYROUTE_CRASH_AFTER", step)],
        );
        assert!(!out.status.success(), "{step}: the crash hook did not fire");
        let _ = cli::run(&ns, &["status"]);
        cli::ok(&ns, &["apply", "-c", policy.arg()]);
        assert_eq!(cli::owned_objects(&ns).len(), want, "{step}: repaired");
        let again = cli::json(&ns, &["apply", "-c", policy.arg()]);
        assert_eq!(again["entries"]["inserted"], 0, "{step}: settled");
        let out = cli::run_env(
            &ns,
            &["apply", "-c", policy.arg()],
            &[("POLICYROUTE_CRASH_AFTER", step)],
        );
        assert!(
            !out.status.success(),
            "{step}: the crash hook fires on a no-op apply too"
        );
        cli::ok(&ns, &["flush"]);
        assert!(
            cli::owned_objects(&ns).is_empty(),
            "{step}: flush after a crash"
        );
    }
}

#[test]
fn concurrent_applies_are_serialized() {
    let ns = lone_router("conc");
    let a = TempFile::new("conc-a.toml", &base());
    let b = TempFile::new("conc-b.toml", &base().replace("table = 101", "table = 102"));
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let (ns_name, file) = (
                ns.name.clone(),
                if i % 2 == 0 {
                    a.arg().to_string()
                } else {
                    b.arg().to_string()
                },
            );
            std::thread::spawn(move || {
                std::process::Command::new("ip")
                    .args(["netns", "exec", &ns_name])
                    .arg(cli::bin())
                    .args(["apply", "-c", &file])
                    .output()
                    .expect("spawn")
            })
        })
        .collect();
    for r in runs {
        let out = r.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let objects = cli::owned_objects(&ns);
    assert_eq!(
        objects.len(),
        2 + 4 + 4 + 1,
        "exactly one policy's objects: {objects:#?}"
    );
    cli::ok(&ns, &["flush"]);
}

#[test]
fn without_privileges_the_error_is_one_clear_line() {
    let ns = lone_router("priv");
    let policy = TempFile::new("priv.toml", &base());
    let out = unprivileged(&ns, &["apply", "-c", policy.arg()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    assert!(cli::owned_objects(&ns).is_empty());
}

/// `policyroute ARGS` in `ns` as user nobody.
fn unprivileged(ns: &policyroute_tests::netns::NetNs, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(cli::bin())
        .args(args)
        .output()
        .expect("spawn")
}

/// `validate` needs neither privileges nor the devices: as user nobody, in a namespace
/// without them, a good policy is valid (exit 0) with the absent devices as warnings, and a
/// bad one is refused at its line (exit 2).
#[test]
fn validate_runs_unprivileged_and_warns_of_absent_devices() {
    let ns = policyroute_tests::netns::NetNs::new("validate");
    let good = TempFile::new("good.toml", &base());
    let out = unprivileged(&ns, &["validate", "-c", good.arg()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("valid (2 gateway(s)"), "{stdout}");
    assert!(
        stdout.contains("gateway[1].dev: device wan2 does not exist here"),
        "{stdout}"
    );
    let bad = TempFile::new("bad.toml", &base().replace("[80, 443]", "\"443-80\""));
    let out = unprivileged(&ns, &["validate", "-c", bad.arg()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rule[1].dport: empty port range 443-80"),
        "{stderr}"
    );
}

/// A policy path that is no regular file, or one far too large, fails at once with exit
/// status 2 naming the path and what it is; nothing waits on a writer or reads forever.
/// (Each takes about 10 ms on the host: a second is the bound there. In the emulated 6.1 VM
/// lane starting the binary alone took up to 7 s, so there the bound only tells a hang.)
#[test]
fn hostile_policy_paths_fail_at_once_naming_the_cause() {
    let ns = lone_router("hostile");
    let dir = std::env::temp_dir().join(format!("prt-{}-hostile", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("policy.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    // 300 MB without writing them (sparse).
    let big = dir.join("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    for (path, says) in [
        (fifo.to_str().unwrap(), "not a regular file (a FIFO)"),
        ("/dev/zero", "not a regular file (a character device)"),
        (dir.to_str().unwrap(), "not a regular file (a directory)"),
        (big.to_str().unwrap(), "314572800 bytes, more than"),
    ] {
        let bound = std::time::Duration::from_secs(if fixture::emulated() { 120 } else { 1 });
        let started = std::time::Instant::now();
        let out = cli::run(&ns, &["apply", "-c", path]);
        assert!(started.elapsed() < bound, "{path}: {:?}", started.elapsed());
        assert_eq!(out.status.code(), Some(2), "{path}: {}", out.stderr);
        assert!(
            out.stderr.contains(path) && out.stderr.contains(says),
            "{path}: {}",
            out.stderr
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Nothing applied is a state of its own: `check` exits 3 and says so, `status` too (and
/// `"applied": false`), before any apply and after a flush. An empty policy installs
/// nothing.
#[test]
fn nothing_applied_is_told_apart_from_a_healthy_policy() {
    let ns = lone_router("nothing");
    let nothing = |when: &str| {
        let out = cli::run(&ns, &["check"]);
        assert_eq!(out.status.code(), Some(3), "{when}: {}", out.stdout);
        assert!(
            out.stdout.contains("no policy applied"),
            "{when}: {}",
            out.stdout
        );
        let s = cli::json(&ns, &["status"]);
        assert_eq!(s["applied"], false, "{when}: {s}");
        assert!(
            cli::ok(&ns, &["status"]).contains("no policy applied in this namespace"),
            "{when}"
        );
    };
    nothing("fresh");
    let rules_before = (ns.ip("rule show"), ns.ip("-6 rule show"));
    let empty = TempFile::new("policy.toml", "");
    cli::ok(&ns, &["apply", "-c", empty.arg()]);
    let rules = (ns.ip("rule show"), ns.ip("-6 rule show"));
    assert_eq!(rules, rules_before, "an empty policy adds no ip rule");
    nothing("empty policy");
    cli::ok(
        &ns,
        &["apply", "-c", TempFile::new("policy.toml", &base()).arg()],
    );
    assert!(cli::run(&ns, &["check"]).status.success());
    assert_eq!(cli::json(&ns, &["status"])["applied"], true);
    cli::ok(&ns, &["flush"]);
    nothing("flushed");
}

/// `-n NAME` runs a command in that named namespace, as `ip -n` does, from the caller's
/// own: what it applies there, `ip netns exec NAME policyroute` finds; no pin is left in the
/// caller's mounts; an unknown name is input (exit status 2).
#[test]
fn minus_n_runs_in_the_named_namespace() {
    let ns = lone_router("minusn");
    let policy = TempFile::new("policy.toml", &base());
    let direct = |args: &[&str]| {
        std::process::Command::new(cli::bin())
            .args(args)
            .output()
            .expect("run policyroute")
    };
    let out = direct(&["-n", &ns.name, "apply", "-c", policy.arg()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cli::run(&ns, &["check"]).status.success(),
        "applied where -n said"
    );
    let pins = std::path::Path::new("/sys/fs/bpf/policyroute");
    let label = cli::json(&ns, &["status"])["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();
    assert!(!pins.join(&label).exists(), "no pin in the caller's bpffs");
    let out = direct(&["--netns", &ns.name, "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cli::run(&ns, &["check"]).status.code(), Some(3));
    let out = direct(&["-n", "prt-no-such-namespace", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prt-no-such-namespace"));
}
