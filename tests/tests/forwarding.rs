//! Forwarded traffic end to end: LAN → router (policyroute applied there) → two uplinks.
//! Real TCP and UDP flows prove which upstream received each flow and what source it saw.
use policyroute_tests::{
    cli,
    fixture::{self, gateway_isp2_with, TempFile, RULES_BY_FIELD},
    topology::{Place, Topology, LAN2_HOST, LAN_HOST, LAN_HOST6, LAN_HOST_ALT},
};

const RT_TABLES: &str = "200 uplink2\n";

/// Besides a rule for each field: a source port, an IPv6 destination prefix, a raw mark
/// and a destination port that the LAN side also has.
const RULES: &str = r#"[[rule]]
name = "dns-sport"
proto = "udp"
sport = 5353
gateway = "isp2"

[[rule]]
name = "to-net1-v6"
dst = "2001:db8:ffff:1::/64"
gateway = "isp2"

[[rule]]
name = "raw"
proto = "udp"
dport = 7000
mark = 0x77

[[rule]]
name = "udp-9999"
proto = "udp"
dport = 9999
gateway = "isp2"
"#;

/// The standard gateway, in the table `RT_TABLES` names.
fn policy() -> String {
    let gateway = gateway_isp2_with("table", "\"uplink2\"");
    fixture::policy(&gateway, &[RULES_BY_FIELD, RULES], "ingress = [\"lan0\"]\n")
}

#[test]
fn forwarded_flows_follow_the_policy() {
    let t = Topology::new("fwd");
    // A raw mark is consumed by someone else's rule: here, the test's own.
    t.router.ip("rule add fwmark 0x77 lookup 300");
    t.router.ip("route add default via 203.0.113.2 table 300");
    let policy = TempFile::new("fwd.toml", &policy());
    let tables = TempFile::new("fwd.rt_tables", RT_TABLES);
    cli::ok(
        &t.router,
        &["--rt-tables", tables.arg(), "apply", "-c", policy.arg()],
    );

    let web = t.tcp(LAN_HOST, 40001, "198.18.0.1", 80).expect("tcp 80");
    assert_eq!(web.at, Place::Up2);
    assert_eq!(
        web.peer.ip().to_string(),
        LAN_HOST,
        "upstream sees the LAN source"
    );
    let alt = t
        .udp(LAN_HOST_ALT, 6000, "198.18.0.1", 1234)
        .expect("udp from alt");
    assert_eq!(
        (alt.at, alt.peer.ip().to_string()),
        (Place::Up2, LAN_HOST_ALT.to_string()),
        "source prefix"
    );
    for (proto, src, sport, dst, dport, want) in [
        // Destination port (TCP), IPv4 and IPv6; other ports use the main default (up1).
        ("tcp", LAN_HOST, 40002, "198.18.0.1", 22, Place::Up1),
        ("tcp", LAN_HOST6, 40003, "2001:db8:ffff::1", 443, Place::Up2),
        (
            "tcp",
            LAN_HOST6,
            40004,
            "2001:db8:ffff::1",
            8443,
            Place::Up1,
        ),
        // Source port (UDP).
        ("udp", LAN_HOST, 5353, "198.18.0.1", 53, Place::Up2),
        ("udp", LAN_HOST, 5354, "198.18.0.1", 53, Place::Up1),
        ("udp", LAN_HOST6, 5353, "2001:db8:ffff::1", 53, Place::Up2),
        ("udp", LAN_HOST6, 5354, "2001:db8:ffff::1", 53, Place::Up1),
        // Source prefix: other LAN sources.
        ("udp", LAN_HOST, 6000, "198.18.0.1", 1234, Place::Up1),
        // Destination prefix.
        ("udp", LAN_HOST, 6001, "198.18.1.1", 1234, Place::Up2),
        ("tcp", LAN_HOST6, 6002, "2001:db8:ffff:1::1", 22, Place::Up2),
        // Raw mark, routed by a rule policyroute does not own.
        ("udp", LAN_HOST, 6003, "198.18.0.1", 7000, Place::Up2),
        // Marked traffic to the LAN side stays there (main routes first); to the internet
        // it takes the gateway.
        ("udp", LAN_HOST, 6004, LAN2_HOST, 9999, Place::Lan2),
        ("udp", LAN_HOST, 6005, "198.18.0.1", 9999, Place::Up2),
    ] {
        assert_eq!(
            t.flow(proto, src, sport, dst, dport).map(|a| a.at),
            Some(want),
            "{proto} {src}:{sport} -> {dst}:{dport}"
        );
    }

    for (rule, at_least) in [
        ("web", 2),
        ("dns-sport", 2),
        ("from-alt", 1),
        ("to-net1", 1),
        ("raw", 1),
        ("udp-9999", 2),
    ] {
        let n = cli::packets(&t.router, rule);
        assert!(
            n >= at_least,
            "rule {rule} counted {n} packets, expected at least {at_least}"
        );
    }
    let status = cli::json(&t.router, &["status"]);
    let gw = &status["gateways"][0];
    assert_eq!(
        (
            gw["name"].as_str(),
            gw["table"].as_u64(),
            gw["dev"].as_str()
        ),
        (Some("isp2"), Some(200), Some("wan2"))
    );
    cli::ok(&t.router, &["flush"]);
    assert_eq!(
        t.tcp(LAN_HOST, 40005, "198.18.0.1", 80).map(|a| a.at),
        Some(Place::Up1),
        "after flush"
    );
}
