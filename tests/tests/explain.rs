//! `policyroute explain` against real packets: for a few hundred random flows, the uplink
//! explain names must be the one the flow's packets actually took.
use policyroute_tests::{
    cgroup::Cgroup,
    cli,
    fixture::{self, GATEWAY_ISP2, GROUP_SPREAD_POLICY, RULES_BY_FIELD},
    probe,
    topology::{Place, Topology, INTERNET, LAN_HOST, LAN_HOST6, LAN_HOST_ALT},
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

/// Besides a rule for each field: a source port range, a `mark = 0` exception and a rule
/// of destination, protocol and port range at once.
const RULES: &str = r#"[[rule]]
name = "mdns-sport"
proto = "udp"
sport = "5353-5354"
gateway = "isp2"

[[rule]]
name = "dns-stays"
proto = "udp"
dport = 53
mark = 0

[[rule]]
name = "v6-dns"
dst = "2001:db8:ffff::/48"
proto = "udp"
dport = "50-60"
gateway = "isp2"
"#;

fn policy(cg: &Cgroup) -> String {
    let attach = format!("ingress = [\"lan0\"]\n{}", cg.attach_local());
    fixture::policy(GATEWAY_ISP2, &[RULES_BY_FIELD, RULES], &attach)
}

#[test]
fn explain_agrees_with_real_packets() {
    let t = Topology::new("explain");
    let cg = Cgroup::new("explain");
    cli::apply(&t.router, &policy(&cg));
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_uplink = [0usize; 2];
    // Under emulation (the 6.1 VM lane, where a flow takes seconds) 8 flows, or more until
    // both uplinks had one (24 at most); the host lane runs the 300.
    let (flows, enough, min_each) = if fixture::emulated() {
        (24, 8, 1)
    } else {
        (300, 300, 31)
    };
    for i in 0..flows {
        if i >= enough && by_uplink.iter().all(|&n| n >= min_each) {
            break;
        }
        let tcp = rng.gen_bool(0.2);
        let src = *[LAN_HOST, LAN_HOST_ALT, LAN_HOST6]
            .choose(&mut rng)
            .unwrap();
        let v6 = src.contains(':');
        let dst = *INTERNET
            .iter()
            .filter(|a| a.contains(':') == v6)
            .collect::<Vec<_>>()
            .choose(&mut rng)
            .unwrap();
        let sport = if rng.gen_bool(0.3) { 5353 } else { 20_000 + i };
        let dport = *[53u16, 55, 80, 443, 1234, 9999, rng.gen_range(1..65535)]
            .choose(&mut rng)
            .unwrap();
        let proto = if tcp { "tcp" } else { "udp" };
        let (sport_s, dport_s) = (sport.to_string(), dport.to_string());
        let e = cli::json(
            &t.router,
            &[
                "explain", "--iif", "lan0", "--proto", proto, "--src", src, "--sport", &sport_s,
                "--dst", dst, "--dport", &dport_s,
            ],
        );
        let arrival = t
            .flow(proto, src, sport, dst, dport)
            .unwrap_or_else(|| panic!("flow {i} {proto} {src}:{sport} -> {dst}:{dport} was lost"));
        let said = Place::of_dev(e["dev"].as_str().expect("explain names a device"));
        assert_eq!(
            said, arrival.at,
            "flow {i} {proto} {src}:{sport} -> {dst}:{dport}: explain said {e}"
        );
        assert_eq!(
            e["table"].as_u64(),
            Some(if said == Place::Up2 { 100 } else { 254 }),
            "{e}"
        );
        by_uplink[usize::from(said == Place::Up2)] += 1;
    }
    assert!(
        by_uplink.iter().all(|&n| n >= min_each),
        "both uplinks exercised: {by_uplink:?}"
    );
    local_flows(&t, &cg);
    cli::ok(&t.router, &["flush"]);
}

/// `--local` against the router's own sockets: device and source address.
fn local_flows(t: &Topology, cg: &Cgroup) {
    for (proto, dst, dport) in [
        ("tcp", "198.18.0.1", 443),
        ("tcp", "198.18.0.1", 22),
        ("udp", "198.18.1.1", 9),
        ("udp", "2001:db8:ffff::1", 55),
        ("udp", "2001:db8:ffff::1", 123),
    ] {
        let src = if dst.contains(':') { "::" } else { "0.0.0.0" };
        let dport_s = dport.to_string();
        let e = cli::json(
            &t.router,
            &[
                "explain", "--local", "--proto", proto, "--src", src, "--dst", dst, "--dport",
                &dport_s,
            ],
        );
        let arrival = if proto == "tcp" {
            probe::tcp(t, cg, &t.router, dst, dport).0
        } else {
            probe::udp(t, cg, &t.router, dst, dport, 1).pop()
        };
        let arrival = arrival.expect("local flow arrived");
        assert_eq!(
            Place::of_dev(e["dev"].as_str().unwrap()),
            arrival.at,
            "{proto} {dst}:{dport}: {e}"
        );
        assert_eq!(
            e["src"].as_str(),
            Some(arrival.peer.ip().to_string().as_str()),
            "{e}"
        );
    }
}

/// A 3:1 group over both uplinks and a blackholed rule: explain names the member a flow's
/// packets really take, with every member up and with isp2's device down, and says when
/// the classifier drops a flow.
fn explain_udp(t: &Topology, src: &str, sport: u16, dst: &str, dport: u16) -> serde_json::Value {
    cli::explain_udp(&t.router, src, Some(sport), dst, dport)
}

/// Explains and sends `n` UDP flows; returns how many explain put on each uplink.
fn group_flows(t: &Topology, n: u16, base: u16) -> [usize; 2] {
    let mut on = [0usize; 2];
    for i in 0..n {
        let (src, dst) = if i % 2 == 0 {
            (LAN_HOST, INTERNET[0])
        } else {
            (LAN_HOST6, INTERNET[2])
        };
        let sport = base + i;
        let e = explain_udp(t, src, sport, dst, 7000);
        assert_eq!(e["group"], "wan", "{e}");
        let at = t
            .udp(src, sport, dst, 7000)
            .unwrap_or_else(|| panic!("flow {src}:{sport} lost; explain said {e}"))
            .at;
        let member = e["member"].as_str().expect("a member");
        let dev = e["dev"].as_str().expect("a device");
        assert_eq!(Place::of_dev(dev), at, "{src}:{sport}: explain said {e}");
        assert_eq!(member == "isp2", at == Place::Up2, "{e}");
        on[usize::from(at == Place::Up2)] += 1;
    }
    on
}

#[test]
fn explain_names_the_group_member_packets_take() {
    let t = Topology::new("exgrp");
    t.router
        .exec("sysctl", &["-qw", "net.ipv6.conf.wan2.accept_dad=0"]);
    cli::apply(&t.router, GROUP_SPREAD_POLICY);
    // Fixed ports, so the spread is the same every run; a handful under emulation.
    let (flows, min) = if fixture::emulated() {
        (40, [20, 3])
    } else {
        (200, [111, 21])
    };
    let on = group_flows(&t, flows, 30_000);
    assert!(
        on[0] >= min[0] && on[1] >= min[1],
        "about 3:1 over {flows} flows: {on:?}"
    );
    let e = explain_udp(&t, LAN_HOST, 999, INTERNET[0], 53);
    assert_eq!(
        (e["member"].as_str(), e["dropped"].as_bool()),
        (Some("isp2"), Some(false))
    );

    t.up2.ip("link set eth0 down");
    cli::apply(&t.router, GROUP_SPREAD_POLICY);
    let flows = if fixture::emulated() { 12 } else { 60 };
    let on = group_flows(&t, flows, 31_000);
    assert_eq!(
        on,
        [usize::from(flows), 0],
        "isp2 has no carrier: every flow takes isp1"
    );
    let e = explain_udp(&t, LAN_HOST, 999, INTERNET[0], 53);
    assert_eq!(e["dropped"].as_bool(), Some(true), "{e}");
    assert!(e["why"].as_str().unwrap().contains("blackhole"), "{e}");
    assert!(
        t.udp(LAN_HOST, 999, INTERNET[0], 53).is_none(),
        "the kill switch drops it"
    );
    cli::ok(&t.router, &["flush"]);
}

/// Questions no packet could ask are refused with exit status 2 and a message, never a
/// panic (exit 101), before anything is looked up.
#[test]
fn impossible_questions_are_refused_with_exit_status_2() {
    let ns = policyroute_tests::netns::NetNs::new("explainq");
    for (args, says) in [
        (
            &[
                "--local",
                "--proto",
                "tcp",
                "--src",
                "192.0.2.10",
                "--dst",
                "2001:db8::1",
            ][..],
            "a packet has one family",
        ),
        (
            &[
                "--local",
                "--proto",
                "icmp",
                "--src",
                "192.0.2.10",
                "--dst",
                "198.18.0.1",
                "--dport",
                "80",
            ],
            "protocol icmp has no ports",
        ),
        (
            &[
                "--local",
                "--proto",
                "nope",
                "--src",
                "192.0.2.10",
                "--dst",
                "198.18.0.1",
            ],
            "unknown protocol",
        ),
        (
            &[
                "--iif",
                "nope0",
                "--proto",
                "udp",
                "--src",
                "192.0.2.10",
                "--dst",
                "198.18.0.1",
            ],
            "device nope0 does not exist",
        ),
    ] {
        let mut full = vec!["explain"];
        full.extend_from_slice(args);
        let out = cli::run(&ns, &full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}
