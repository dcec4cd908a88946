//! Forwarded traffic end to end: LAN → router (policyroute applied there) → two uplinks.
//! Real TCP and UDP flows prove which upstream received each flow and what source it saw.
use policyroute_tests::{
    cli,
    files::TempFile,
    topology::{Place, Topology, LAN2_HOST, LAN_HOST, LAN_HOST6, LAN_HOST_ALT},
};

const RT_TABLES: &str = "200 uplink2\n";

const POLICY: &str = r#"
[[gateway]]
name = "isp2"
dev = "wan2"
via = ["203.0.113.2", "2001:db8:b::2"]
table = "uplink2"

[[rule]]
name = "web"
proto = "tcp"
dport = [80, 443]
gateway = "isp2"

[[rule]]
name = "dns-sport"
proto = "udp"
sport = 5353
gateway = "isp2"

[[rule]]
name = "from-alt"
src = "192.0.2.99/32"
gateway = "isp2"

[[rule]]
name = "to-net1"
dst = "198.18.1.0/24"
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

[attach]
ingress = ["lan0"]
"#;

fn place(a: Option<policyroute_tests::topology::Arrival>) -> Place {
    a.expect("the flow arrived somewhere").at
}

#[test]
fn forwarded_flows_follow_the_policy() {
    let t = Topology::new("fwd");
    // A raw mark is consumed by someone else's rule: here, the test's own.
    t.router
        .exec("ip", &["rule", "add", "fwmark", "0x77", "lookup", "300"]);
    t.router.exec(
        "ip",
        &[
            "route",
            "add",
            "default",
            "via",
            "203.0.113.2",
            "table",
            "300",
        ],
    );
    let policy = TempFile::new("fwd.toml", POLICY);
    let tables = TempFile::new("fwd.rt_tables", RT_TABLES);
    cli::ok(
        &t.router,
        &["--rt-tables", tables.arg(), "apply", "-c", policy.arg()],
    );

    // Destination port (TCP), IPv4 and IPv6; other ports use the main default (up1).
    let web = t.tcp(LAN_HOST, 40001, "198.18.0.1", 80).expect("tcp 80");
    assert_eq!(web.at, Place::Up2);
    assert_eq!(
        web.peer.ip().to_string(),
        LAN_HOST,
        "upstream sees the LAN source"
    );
    assert_eq!(place(t.tcp(LAN_HOST, 40002, "198.18.0.1", 22)), Place::Up1);
    assert_eq!(
        place(t.tcp(LAN_HOST6, 40003, "2001:db8:ffff::1", 443)),
        Place::Up2
    );
    assert_eq!(
        place(t.tcp(LAN_HOST6, 40004, "2001:db8:ffff::1", 8443)),
        Place::Up1
    );
    // Source port (UDP).
    assert_eq!(place(t.udp(LAN_HOST, 5353, "198.18.0.1", 53)), Place::Up2);
    assert_eq!(place(t.udp(LAN_HOST, 5354, "198.18.0.1", 53)), Place::Up1);
    assert_eq!(
        place(t.udp(LAN_HOST6, 5353, "2001:db8:ffff::1", 53)),
        Place::Up2
    );
    assert_eq!(
        place(t.udp(LAN_HOST6, 5354, "2001:db8:ffff::1", 53)),
        Place::Up1
    );
    // Source prefix.
    let alt = t
        .udp(LAN_HOST_ALT, 6000, "198.18.0.1", 1234)
        .expect("udp from alt");
    assert_eq!(
        (alt.at, alt.peer.ip().to_string()),
        (Place::Up2, LAN_HOST_ALT.to_string())
    );
    assert_eq!(place(t.udp(LAN_HOST, 6000, "198.18.0.1", 1234)), Place::Up1);
    // Destination prefix.
    assert_eq!(place(t.udp(LAN_HOST, 6001, "198.18.1.1", 1234)), Place::Up2);
    assert_eq!(
        place(t.tcp(LAN_HOST6, 6002, "2001:db8:ffff:1::1", 22)),
        Place::Up2
    );
    // Raw mark, routed by a rule policyroute does not own.
    assert_eq!(place(t.udp(LAN_HOST, 6003, "198.18.0.1", 7000)), Place::Up2);
    // Marked traffic to the LAN side stays there (main routes first); to the internet it
    // takes the gateway.
    assert_eq!(place(t.udp(LAN_HOST, 6004, LAN2_HOST, 9999)), Place::Lan2);
    assert_eq!(place(t.udp(LAN_HOST, 6005, "198.18.0.1", 9999)), Place::Up2);

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
        place(t.tcp(LAN_HOST, 40005, "198.18.0.1", 80)),
        Place::Up1,
        "after flush"
    );
}
