//! This host's own traffic (`[attach] local = true`): sockets of the router, in a
//! throwaway child cgroup, steered by the cgroup connect/sendmsg hooks. Real packets show
//! which upstream received each flow and which source address it carried.
use policyroute_tests::{
    cgroup::Cgroup,
    cli,
    files::TempFile,
    probe,
    topology::{Place, Topology},
};

fn policy(cg: &Cgroup) -> String {
    format!(
        r#"
[[gateway]]
name = "isp2"
dev = "wan2"
via = ["203.0.113.2", "2001:db8:b::2"]
table = 100

[[rule]]
name = "smtp"
proto = "tcp"
dport = 25
gateway = "isp2"

[[rule]]
name = "dns"
proto = "udp"
dport = 53
gateway = "isp2"

[attach]
local = true
local_cgroup = "{}"
"#,
        cg.path
    )
}

#[test]
fn local_flows_follow_the_policy_with_the_gateways_source() {
    let t = Topology::new("local");
    let cg = Cgroup::new("local");
    let file = TempFile::new("local.toml", &policy(&cg));
    cli::ok(&t.router, &["apply", "-c", file.arg()]);
    let r = &t.router;

    // TCP connect: the SYN already leaves through the marked table, from wan2's address.
    let (a, marks) = t.expect_tcp("198.18.0.1", 25, || {
        probe::spawn(&cg, r, &["tcp", "198.18.0.1", "25"])
    });
    let a = a.expect("smtp arrived");
    assert_eq!(
        (a.at, a.peer.ip().to_string()),
        (Place::Up2, "203.0.113.1".into())
    );
    assert!(marks.contains("mark 0x1"), "{marks}");
    let (a, marks) = t.expect_tcp("198.18.0.1", 22, || {
        probe::spawn(&cg, r, &["tcp", "198.18.0.1", "22"])
    });
    let a = a.expect("ssh arrived");
    assert_eq!(
        (a.at, a.peer.ip().to_string()),
        (Place::Up1, "198.51.100.1".into())
    );
    assert!(marks.contains("mark 0x0"), "{marks}");
    let (a, _) = t.expect_tcp("2001:db8:ffff::1", 25, || {
        probe::spawn(&cg, r, &["tcp", "2001:db8:ffff::1", "25"])
    });
    let a = a.expect("smtp v6 arrived");
    assert_eq!(
        (a.at, a.peer.ip().to_string()),
        (Place::Up2, "2001:db8:b::1".into())
    );

    // Unconnected UDP: every datagram, the first included, via isp2 from its address.
    for (dst, src) in [
        ("198.18.0.1", "203.0.113.1"),
        ("2001:db8:ffff::1", "2001:db8:b::1"),
    ] {
        let got = t.expect_udp(dst, 53, 3, || {
            probe::run(&cg, r, &["udp", dst, "53", "3"]);
        });
        assert_eq!(got.len(), 3, "{dst}: {got:?}");
        for a in got {
            assert_eq!(
                (a.at, a.peer.ip().to_string()),
                (Place::Up2, src.to_string()),
                "{dst}"
            );
        }
    }
    let got = t.expect_udp("198.18.0.1", 54, 1, || {
        probe::run(&cg, r, &["udp", "198.18.0.1", "54", "1"]);
    });
    assert_eq!(got.iter().map(|a| a.at).collect::<Vec<_>>(), [Place::Up1]);
    // Connected UDP.
    let got = t.expect_udp("2001:db8:ffff::1", 53, 1, || {
        probe::run(&cg, r, &["udp-connected", "2001:db8:ffff::1", "53"]);
    });
    assert_eq!(
        got.iter()
            .map(|a| (a.at, a.peer.ip().to_string()))
            .collect::<Vec<_>>(),
        [(Place::Up2, "2001:db8:b::1".to_string())]
    );

    // A socket of another namespace in the same cgroup is not touched.
    let (a, marks) = t.expect_tcp("198.18.0.1", 25, || {
        probe::spawn(&cg, &t.lan, &["tcp", "198.18.0.1", "25"])
    });
    assert_eq!(
        a.map(|a| a.at),
        Some(Place::Up1),
        "LAN socket, nothing on lan0"
    );
    assert!(marks.contains("mark 0x0"), "{marks}");

    let status = cli::json(r, &["status"]);
    assert!(cli::packets(r, "smtp") >= 2, "{status}");
    assert!(cli::packets(r, "dns") >= 3, "{status}");
    assert!(
        status["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["hook"] == "cgroup"),
        "{status}"
    );
    cli::ok(r, &["flush"]);
    let (a, _) = t.expect_tcp("198.18.0.1", 25, || {
        probe::spawn(&cg, r, &["tcp", "198.18.0.1", "25"])
    });
    assert_eq!(a.map(|a| a.at), Some(Place::Up1), "after flush");
}
