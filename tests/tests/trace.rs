//! `policyroute trace` on real forwarded packets: the lines name the device, hook,
//! 5-tuple, rule and gateway the dataplane gave each packet; the filter holds; the rate
//! limit drops and says so; Ctrl-C stops it and routing is what it was.
use policyroute_tests::{
    cgroup::Cgroup,
    cli,
    fixture::{self, TempFile, GATEWAY_ISP2, GROUP_SPREAD_POLICY, RULES_BY_FIELD, RULES_WEB_DNS},
    netns::NetNs,
    probe,
    topology::{Place, Topology, INTERNET, LAN_HOST, LAN_HOST6},
    tracer::Tracer,
};
use serde_json::Value;

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn applied(tag: &str) -> (Topology, TempFile) {
    let t = Topology::new(tag);
    let policy = fixture::policy(GATEWAY_ISP2, &[RULES_BY_FIELD], "ingress = [\"lan0\"]\n");
    let file = TempFile::new(&format!("{tag}.toml"), &policy);
    cli::ok(&t.router, &["apply", "-c", file.arg()]);
    (t, file)
}

#[test]
fn trace_names_rule_gateway_and_tuple_of_real_packets() {
    let (t, _policy) = applied("trc");
    let tracer = Tracer::start(
        &t.router,
        &["--json", "--iif", "lan0", "--proto", "tcp", "--dport", "80"],
    );
    let mut sport = 41000;
    let lines = tracer.lines_while(3, || {
        // Outside the filter (port 22, UDP), then inside it.
        let _ = t.udp(LAN_HOST, sport, "198.18.0.1", 22);
        let _ = t.udp(LAN_HOST, sport + 1000, "198.18.0.1", 80);
        let web = t
            .tcp(LAN_HOST, sport + 1, "198.18.0.1", 80)
            .expect("tcp 80");
        assert_eq!(web.at, Place::Up2);
        sport += 2;
    });
    for line in &lines {
        let v = json(line);
        assert_eq!(v["hook"], "tc-ingress", "{line}");
        assert_eq!(v["dev"], "lan0", "{line}");
        assert_eq!(v["proto"], "tcp", "{line}");
        assert_eq!(v["dport"], 80, "{line}");
        assert_eq!(v["dst"], "198.18.0.1", "{line}");
        assert_eq!(v["src"], LAN_HOST, "{line}");
        assert_eq!(v["rule"], "web", "{line}");
        assert_eq!(v["gateway"], "isp2", "{line}");
        assert_eq!(v["decision"], "gateway up", "{line}");
        assert_ne!(v["mark"], 0, "{line}");
    }
    let (ok, err) = tracer.interrupt();
    assert!(ok, "trace exits 0 on Ctrl-C: {err}");
    // Routing is what it was, and a new trace may start (the filter was released).
    let after = t.tcp(LAN_HOST, 41999, "198.18.0.1", 22).expect("tcp 22");
    assert_eq!(after.at, Place::Up1);
    let again = Tracer::start(
        &t.router,
        &["--count", "1", "--proto", "tcp", "--dport", "22"],
    );
    let mut sport = 42000;
    let text = again.lines_while(1, || {
        let _ = t.tcp(LAN_HOST, sport, "198.18.0.1", 22);
        sport += 1;
    });
    let line = &text[0];
    assert!(
        line.contains(" lan0 tc-ingress tcp 192.0.2.10:42")
            && line.ends_with(" -> 198.18.0.1:22 no rule"),
        "{line}"
    );
}

#[test]
fn trace_counts_stop_and_the_v6_prefix_filter() {
    let (t, _policy) = applied("trc6");
    let mut tracer = Tracer::start(
        &t.router,
        &["--json", "--count", "2", "--dst", "2001:db8:ffff::/48"],
    );
    let mut sport = 43000;
    let lines = tracer.lines_while(2, || {
        let _ = t.tcp(LAN_HOST, sport, "198.18.0.1", 443);
        let _ = t.tcp(LAN_HOST6, sport, "2001:db8:ffff::1", 443);
        sport += 1;
    });
    let (ok, err) = tracer.finish();
    assert!(ok, "--count ends the trace: {err}");
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let v = json(line);
        assert_eq!(v["dst"], "2001:db8:ffff::1", "{line}");
        assert_eq!(v["src"], LAN_HOST6, "{line}");
        assert_eq!(v["rule"], "web", "{line}");
    }
}

#[test]
fn trace_names_the_group_member_each_flow_took() {
    let t = Topology::new("trcg");
    cli::apply(&t.router, GROUP_SPREAD_POLICY);
    let tracer = Tracer::start(&t.router, &["--json", "--proto", "udp", "--dport", "7000"]);
    let mut went = std::collections::BTreeMap::new();
    let mut sport = 45000;
    let lines = tracer.lines_while(40, || {
        // A datagram lost on a loaded machine only leaves its line unchecked.
        if let Some(a) = t.udp(LAN_HOST, sport, INTERNET[0], 7000) {
            went.insert(sport, a.at);
        }
        sport += 1;
    });
    let mut on = [0, 0];
    for line in &lines {
        let v = json(line);
        let Some(&at) = went.get(&(v["sport"].as_u64().unwrap() as u16)) else {
            continue;
        };
        let want = if at == Place::Up2 { "isp2" } else { "isp1" };
        assert_eq!(v["gateway"], want, "the packets went to {at:?}: {line}");
        assert_eq!(
            (&v["rule"], &v["group"], &v["decision"]),
            (&"spread".into(), &"wan".into(), &"balance slot".into()),
            "{line}"
        );
        on[usize::from(at == Place::Up2)] += 1;
    }
    assert!(on[0] > 0 && on[1] > 0, "both members traced: {on:?}");
    drop(tracer);

    // isp2 without carrier: the kill switch drops, and the trace says so.
    t.up2.ip("link set eth0 down");
    cli::apply(&t.router, GROUP_SPREAD_POLICY);
    let tracer = Tracer::start(&t.router, &["--json", "--dport", "53", "--count", "1"]);
    let lines = tracer.lines_while(1, || {
        assert!(t.udp(LAN_HOST, 999, INTERNET[0], 53).is_none(), "dropped");
    });
    let v = json(&lines[0]);
    assert_eq!(v["rule"], "kill-switch", "{v}");
    assert_eq!(v["decision"], "all down: blackhole", "{v}");
    assert_eq!(v["dropped"], true, "{v}");
}

#[test]
fn trace_shows_the_socket_hooks_of_local_traffic() {
    let t = Topology::new("trcl");
    let cg = Cgroup::new("trcl");
    let policy = fixture::policy(GATEWAY_ISP2, &[RULES_WEB_DNS], &cg.attach_local());
    cli::apply(&t.router, &policy);
    let tracer = Tracer::start(&t.router, &["--json", "--proto", "udp", "--dport", "53"]);
    let lines = tracer.lines_while(1, || {
        let got = probe::udp(&t, &cg, &t.router, "198.18.0.1", 53, 1);
        assert_eq!(got.iter().map(|a| a.at).collect::<Vec<_>>(), [Place::Up2]);
    });
    let v = json(&lines[0]);
    assert_eq!(v["hook"], "sendmsg", "{v}");
    assert_eq!(v["dev"], Value::Null, "{v}");
    assert_eq!(v["dst"], "198.18.0.1", "{v}");
    assert_eq!(v["rule"], "dns", "{v}");
    assert_eq!(v["gateway"], "isp2", "{v}");
}

#[test]
fn trace_rate_limit_drops_and_says_so() {
    let (t, _policy) = applied("trcr");
    let tracer = Tracer::start(&t.router, &["--rate", "1", "--proto", "udp"]);
    let mut sport = 44000;
    tracer.lines_while(1, || {
        let _ = t.udp(LAN_HOST, sport, "198.18.0.1", 53);
        sport += 1;
    });
    // Within the same second, far more packets than the limit.
    for port in 0..40 {
        let _ = t.udp(LAN_HOST, sport + port, "198.18.0.1", 53);
    }
    let (ok, err) = tracer.interrupt();
    assert!(ok, "{err}");
    assert!(
        err.contains("dropped by the rate limit"),
        "the drops are reported: {err:?}"
    );
}

#[test]
fn trace_without_a_dataplane_is_a_clear_error() {
    let ns = NetNs::new("trcn");
    let out = cli::run(&ns, &["trace", "--count", "1"]);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("no policyroute dataplane in this namespace"),
        "{}",
        out.stderr
    );
}
