//! This host's own traffic (`[attach] local = true`): sockets of the router, in a
//! throwaway child cgroup, steered by the cgroup connect/sendmsg hooks. Real packets show
//! which upstream received each flow and which source address it carried.
use policyroute_tests::{
    cgroup::Cgroup,
    cli,
    fixture::{self, GATEWAY_ISP2, RULES_WEB_DNS},
    probe,
    topology::{Place, Receivers, Topology},
};

const SMTP: &str = r#"[[rule]]
name = "smtp"
proto = "tcp"
dport = 25
gateway = "isp2"
"#;

fn policy(cg: &Cgroup) -> String {
    fixture::policy(GATEWAY_ISP2, &[RULES_WEB_DNS, SMTP], &cg.attach_local())
}

#[test]
fn local_flows_follow_the_policy_with_the_gateways_source() {
    let t = Topology::new("local");
    let cg = Cgroup::new("local");
    cli::apply(&t.router, &policy(&cg));
    let r = &t.router;

    // TCP connect: the SYN already leaves through the marked table, from wan2's address.
    for (what, dst, port, at, src, mark) in [
        (
            "smtp",
            "198.18.0.1",
            25,
            Place::Up2,
            "203.0.113.1",
            Some("mark 0x1"),
        ),
        (
            "ssh",
            "198.18.0.1",
            22,
            Place::Up1,
            "198.51.100.1",
            Some("mark 0x0"),
        ),
        (
            "smtp v6",
            "2001:db8:ffff::1",
            25,
            Place::Up2,
            "2001:db8:b::1",
            None,
        ),
    ] {
        let (a, marks) = probe::tcp(&t, &cg, r, dst, port);
        let a = a.unwrap_or_else(|| panic!("{what} did not arrive"));
        assert_eq!(
            (a.at, a.peer.ip().to_string()),
            (at, src.to_string()),
            "{what}"
        );
        if let Some(mark) = mark {
            assert!(marks.contains(mark), "{what}: {marks}");
        }
    }

    // Unconnected UDP: every datagram, the first included, via isp2 from its address.
    for (dst, src) in [
        ("198.18.0.1", "203.0.113.1"),
        ("2001:db8:ffff::1", "2001:db8:b::1"),
    ] {
        let got = probe::udp(&t, &cg, r, dst, 53, 3);
        assert_eq!(got.len(), 3, "{dst}: {got:?}");
        for a in got {
            assert_eq!(
                (a.at, a.peer.ip().to_string()),
                (Place::Up2, src.to_string()),
                "{dst}"
            );
        }
    }
    let got = probe::udp(&t, &cg, r, "198.18.0.1", 54, 1);
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
    let (a, marks) = probe::tcp(&t, &cg, &t.lan, "198.18.0.1", 25);
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
    let (a, _) = probe::tcp(&t, &cg, r, "198.18.0.1", 25);
    assert_eq!(a.map(|a| a.at), Some(Place::Up1), "after flush");
}
