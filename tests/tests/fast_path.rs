//! `fast_path = true`: tc ingress forwards traffic a rule sends to a gateway itself
//! (bpf_fib_lookup in the gateway's table + bpf_redirect_neigh), with no ip rules. Real
//! packets show where each flow went, the TTL it arrived with, and the ICMP errors the
//! sender got.
use std::net::UdpSocket;

use policyroute_tests::{
    cli,
    fixture::{self, GATEWAY_ISP2, GROUP_SPREAD_POLICY},
    hops::{IcmpError, Send},
    topology::{Place, Topology, INTERNET, LAN2_HOST, LAN2_HOST6, LAN_HOST, LAN_HOST6},
};

const RULES: &str = r#"[[rule]]
name = "udp-9999"
proto = "udp"
dport = 9999
gateway = "isp2"

[[rule]]
name = "web"
proto = "tcp"
dport = [80, 443]
gateway = "isp2"
"#;

fn policy() -> String {
    let p = fixture::policy(GATEWAY_ISP2, &[RULES], "ingress = [\"lan0\"]\n");
    format!("fast_path = true\n{p}")
}

fn applied(tag: &str) -> Topology {
    let t = Topology::new(tag);
    cli::apply(&t.router, &policy());
    t
}

/// Where one datagram arrived, and its TTL. A datagram lost on a heavily loaded machine is
/// sent once more from the next source port (the first-packet test below does not retry).
fn probe(t: &Topology, src: &str, sport: u16, dst: &str, dport: u16) -> (Place, u8) {
    let mut p = t.udp_probe(src, sport, dst, dport, Send::default());
    if p.hops.is_empty() && p.error.is_none() {
        eprintln!("{src} -> {dst}:{dport} lost once; sending again");
        p = t.udp_probe(src, sport.wrapping_add(1000), dst, dport, Send::default());
    }
    let Some(hop) = p.hops.first() else {
        let fast = &cli::json(&t.router, &["status"])["fast_path"];
        let neigh = t.router.exec("ip", &["-6", "neigh"]);
        let lan = t.lan.exec("ip", &["-6", "neigh"]);
        panic!("{src} -> {dst}:{dport} lost: {p:?}\n{fast}\nrouter:\n{neigh}\nlan:\n{lan}");
    };
    (hop.arrival.at, hop.ttl)
}

#[test]
fn matched_flows_are_forwarded_with_ttl_minus_one_and_no_ip_rules() {
    let t = applied("fp");
    for (src, dst) in [(LAN_HOST, "198.18.0.1"), (LAN_HOST6, "2001:db8:ffff::1")] {
        assert_eq!(
            probe(&t, src, 41000, dst, 9999),
            (Place::Up2, 63),
            "{dst}: matched"
        );
        assert_eq!(
            probe(&t, src, 41001, dst, 9998),
            (Place::Up1, 63),
            "{dst}: unmatched"
        );
        let web = t.tcp(src, 41002, dst, 443).expect("tcp 443");
        assert_eq!(web.at, Place::Up2, "{dst}: a whole TCP exchange");
    }
    // Marked traffic to a LAN-side route stays on the LAN (main_routes_first).
    for (src, dst) in [(LAN_HOST, LAN2_HOST), (LAN_HOST6, LAN2_HOST6)] {
        assert_eq!(probe(&t, src, 41003, dst, 9999), (Place::Lan2, 63), "{dst}");
    }
    for family in ["-4", "-6"] {
        let rules = t.router.exec("ip", &[family, "rule", "show"]);
        assert!(
            !rules.contains("fwmark") && !rules.contains("suppress_prefixlength"),
            "no policyroute rules with the fast path:\n{rules}"
        );
    }
    let stats = cli::json(&t.router, &["status"]);
    assert!(
        stats["fast_path"]["forwarded"].as_u64().unwrap() >= 3,
        "{}",
        stats["fast_path"]
    );
}

#[test]
fn packets_for_the_router_itself_are_delivered_locally() {
    let t = applied("fplocal");
    for addr in ["203.0.113.1", "192.0.2.1", "2001:db8:b::1", "2001:db8:1::1"] {
        let server = {
            let _in = t.router.enter();
            UdpSocket::bind((addr, 9999)).expect("bind on the router")
        };
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(3)))
            .unwrap();
        let src = if addr.contains(':') {
            LAN_HOST6
        } else {
            LAN_HOST
        };
        let client = {
            let _in = t.lan.enter();
            UdpSocket::bind((src, 0)).unwrap()
        };
        client.send_to(b"to the router", (addr, 9999)).unwrap();
        let mut buf = [0u8; 32];
        let (n, _) = server
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{addr}: not delivered locally: {e}"));
        assert_eq!(&buf[..n], b"to the router");
    }
}

#[test]
fn the_first_packet_before_any_neighbour_entry_arrives() {
    let t = applied("fpneigh");
    t.router.ip("neigh flush dev wan2");
    t.router.ip("-6 neigh flush dev wan2");
    for (src, dst) in [(LAN_HOST, "198.18.0.1"), (LAN_HOST6, "2001:db8:ffff::1")] {
        let p = t.udp_probe(src, 42000, dst, 9999, Send::default());
        let hop = p
            .hops
            .first()
            .unwrap_or_else(|| panic!("{dst}: the first packet was lost"));
        assert_eq!((hop.arrival.at, hop.ttl), (Place::Up2, 63), "{dst}");
    }
}

#[test]
fn ttl_one_gets_time_exceeded() {
    let t = applied("fpttl");
    for (src, dst, kind) in [
        (LAN_HOST, "198.18.0.1", 11),
        (LAN_HOST6, "2001:db8:ffff::1", 3),
    ] {
        let how = Send {
            ttl: 1,
            ..Send::default()
        };
        let p = t.udp_probe(src, 43000, dst, 9999, how);
        assert!(p.hops.is_empty(), "{dst}: {p:?}");
        let e = p.error.unwrap_or_else(|| panic!("{dst}: no ICMP error"));
        assert_eq!((e.kind, e.code), (kind, 0), "{dst}: time exceeded: {e:?}");
    }
}

#[test]
fn too_big_with_df_gets_the_gateways_mtu_and_never_another_uplink() {
    let t = applied("fpmtu");
    t.router.ip("link set wan2 mtu 1400");
    t.up2.ip("link set eth0 mtu 1400");
    for (src, dst, want) in [
        (LAN_HOST, "198.18.0.1", (3, 4, 1400, "192.0.2.1")),
        (LAN_HOST6, "2001:db8:ffff::1", (2, 0, 1400, "2001:db8:1::1")),
    ] {
        let how = Send {
            size: 1450,
            df: true,
            ..Send::default()
        };
        let p = t.udp_probe(src, 44000, dst, 9999, how);
        assert!(p.hops.is_empty(), "{dst}: nothing leaves: {p:?}");
        let (kind, code, info, from) = want;
        assert_eq!(
            p.error,
            Some(IcmpError {
                kind,
                code,
                info,
                from: Some(from.parse().unwrap()),
            }),
            "{dst}"
        );
        // Within the MTU it still goes through isp2.
        assert_eq!(probe(&t, src, 44001, dst, 9999), (Place::Up2, 63), "{dst}");
    }
    // Without DF the kernel would fragment; the fast path drops it, counted.
    let big = Send {
        size: 1450,
        ..Send::default()
    };
    let p = t.udp_probe(LAN_HOST, 44002, "198.18.0.1", 9999, big);
    assert!(p.hops.is_empty(), "{p:?}");
    let stats = cli::json(&t.router, &["status"]);
    assert_eq!(
        stats["fast_path"]["dropped_fragment"], 1,
        "{}",
        stats["fast_path"]
    );
}

#[test]
fn explain_agrees_with_where_200_random_flows_went() {
    use rand::{seq::SliceRandom, Rng, SeedableRng};
    let t = Topology::new("fpexpl");
    t.router
        .exec("sysctl", &["-qw", "net.ipv6.conf.wan2.accept_dad=0"]);
    cli::apply(
        &t.router,
        &format!("fast_path = true\n{GROUP_SPREAD_POLICY}"),
    );
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..200u16 {
        let v6 = rng.gen_bool(0.5);
        let src = if v6 { LAN_HOST6 } else { LAN_HOST };
        let mut dsts: Vec<&str> = INTERNET
            .iter()
            .copied()
            .filter(|a| a.contains(':') == v6)
            .collect();
        dsts.push(if v6 { LAN2_HOST6 } else { LAN2_HOST });
        let dst = *dsts.choose(&mut rng).unwrap();
        let (sport, dport) = (30_000 + i, rng.gen_range(1000..60000u16));
        let e = cli::explain_udp(&t.router, src, Some(sport), dst, dport);
        let got = probe(&t, src, sport, dst, dport);
        let dev = e["dev"]
            .as_str()
            .unwrap_or_else(|| panic!("no device: {e}"));
        assert_eq!(
            Place::of_dev(dev),
            got.0,
            "flow {i} udp {src}:{sport} -> {dst}:{dport}: {e}"
        );
        assert_eq!(got.1, 63, "TTL minus one: {e}");
        let fast = e["forwarded_by_dataplane"].as_bool().unwrap();
        assert_eq!(
            fast,
            got.0 != Place::Lan2,
            "LAN routes stay with the kernel: {e}"
        );
        *seen.entry(dev.to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "both members and the LAN: {seen:?}");
    let args = cli::explain_udp_args(LAN_HOST, Some(1), "198.18.0.1", 53);
    let text = cli::ok(
        &t.router,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        text.contains("route: forwarded by the dataplane via 203.0.113.2 dev wan2 (table 102)"),
        "{text}"
    );
}

#[test]
fn a_member_without_carrier_gives_its_flows_to_the_other_and_blackhole_still_drops() {
    let t = Topology::new("fpdown");
    let policy = format!("fast_path = true\n{GROUP_SPREAD_POLICY}");
    t.up2.ip("link set eth0 down");
    cli::apply(&t.router, &policy);
    for i in 0..40u16 {
        let (src, dst) = if i % 2 == 0 {
            (LAN_HOST, INTERNET[0])
        } else {
            (LAN_HOST6, INTERNET[2])
        };
        assert_eq!(
            probe(&t, src, 45000 + i, dst, 7000),
            (Place::Up1, 63),
            "{dst}"
        );
    }
    let p = t.udp_probe(LAN_HOST, 45100, INTERNET[0], 53, Send::default());
    assert!(
        p.hops.is_empty() && p.error.is_none(),
        "the kill switch drops: {p:?}"
    );
}

#[test]
fn under_run_a_new_main_route_takes_matched_traffic_off_the_fast_path() {
    use policyroute_tests::{daemon::Daemon, fixture::TempFile};
    let t = Topology::new("fprun");
    let file = TempFile::new("fprun.toml", &policy());
    let d = Daemon::start(&t.router, file.arg(), &[], &[]);
    d.ready();
    // A LAN-side network appears: 198.18.7.0/24 behind lan2, by a static route.
    t.lan2.ip("addr add 198.18.7.1/32 dev lo");
    t.router.ip("route add 198.18.7.0/24 via 192.0.2.130");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut sport = 46000;
    loop {
        let p = t.udp_probe(LAN_HOST, sport, "198.18.7.1", 9999, Send::default());
        if p.hops.first().map(|h| h.arrival.at) == Some(Place::Lan2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "matched traffic to the new LAN route never stayed on the LAN: {p:?}\n{}",
            d.log_text()
        );
        sport += 1;
    }
}
