//! Seed 003 as written: one host, one interface, a LAN with two routers, locally generated
//! SMTP through the second. A gateway that shares its device (and so the host's address)
//! with the main uplink routes only what the policy sends to it: real flows show which
//! router's MAC each one went to (`shared_lan`).
use std::process::Command;

use policyroute_tests::{
    cgroup::Cgroup,
    cli,
    fixture::TempFile,
    probe,
    recipe::{self, Saved},
    shared_lan::{SharedLan, HOST, HOST6, LAN2, LAN2_6, REMOTE},
    topology::{Place, Receivers},
};

/// Seed 003's recipe as a policy: tcp/25 via 192.0.2.2 (and its IPv6 twin), the host's
/// own traffic and traffic it forwards for lan2.
fn seed_003(cg: &Cgroup, sticky: bool) -> String {
    format!(
        "[[gateway]]\nname = \"smtp\"\ndev = \"eth0\"\nvia = [\"192.0.2.2\", \"2001:db8:1::2\"]\n\
         table = 100\nsticky = {sticky}\n\n\
         [[rule]]\nname = \"smtp\"\nproto = \"tcp\"\ndport = 25\ngateway = \"smtp\"\n\n\
         [attach]\ningress = [\"eth0\"]\n{}",
        cg.attach_local()
    )
}

#[test]
fn only_smtp_reaches_the_second_router_on_a_shared_lan() {
    let t = SharedLan::new("seed3");
    let cg = Cgroup::new("seed3");
    let out = cli::apply(&t.host, &seed_003(&cg, false));
    assert!(
        out.contains("gateway smtp shares eth0 with the main uplink (IPv4 and IPv6)"),
        "apply says what the socket hooks cannot steer: {out}"
    );
    let h = &t.host;

    // The host's own TCP: only port 25 goes to r2, from the host's one address.
    for (dst, port, at, src) in [
        (REMOTE[0], 25, Place::Up2, HOST),
        (REMOTE[0], 443, Place::Up1, HOST),
        (REMOTE[0], 22, Place::Up1, HOST),
        (REMOTE[1], 25, Place::Up2, HOST6),
        (REMOTE[1], 443, Place::Up1, HOST6),
    ] {
        let (a, _) = probe::tcp(&t, &cg, h, dst, port);
        let a = a.unwrap_or_else(|| panic!("tcp {dst} {port} did not arrive"));
        assert_eq!(
            (a.at, a.peer.ip().to_string()),
            (at, src.to_string()),
            "tcp {dst} {port}"
        );
    }
    // UDP that no rule names (DNS, say) stays on the main router, unconnected and
    // connected alike.
    for dst in REMOTE {
        let got = probe::udp(&t, &cg, h, dst, 53, 3);
        assert_eq!(
            got.iter().map(|a| a.at).collect::<Vec<_>>(),
            [Place::Up1; 3],
            "udp {dst}"
        );
        let got = t.expect_udp(dst, 53, 1, || {
            probe::run(&cg, h, &["udp-connected", dst, "53"]);
        });
        assert_eq!(
            got.iter().map(|a| a.at).collect::<Vec<_>>(),
            [Place::Up1],
            "connected udp {dst}"
        );
    }

    // Forwarded for a second LAN host: the same.
    for (src, dst) in [(LAN2, REMOTE[0]), (LAN2_6, REMOTE[1])] {
        for (port, at) in [(25, Place::Up2), (443, Place::Up1)] {
            let a = t.tcp_from((&t.lan2, src, 0), dst, port);
            assert_eq!(
                a.map(|a| (a.at, a.peer.ip().to_string())),
                Some((at, src.to_string())),
                "forwarded tcp {src} -> {dst} {port}"
            );
        }
        let a = t.udp_from((&t.lan2, src, 0), dst, 53);
        assert_eq!(a.map(|a| a.at), Some(Place::Up1), "forwarded udp {src}");
    }
    cli::ok(h, &["flush"]);
}

#[test]
fn a_sticky_gateway_sharing_the_main_uplink_is_refused_naming_it() {
    let t = SharedLan::new("seed3s");
    let cg = Cgroup::new("seed3s");
    let rules_before = t.host.ip("rule show");
    let file = TempFile::new("policy.toml", &seed_003(&cg, true));
    let out = cli::run(&t.host, &["apply", "-c", file.arg()]);
    assert!(!out.status.success(), "applied: {}", out.stdout);
    assert!(
        out.stderr.contains("gateway[1].sticky")
            && out
                .stderr
                .contains("gateway smtp shares eth0 with the main uplink"),
        "{}",
        out.stderr
    );
    assert_eq!(t.host.ip("rule show"), rules_before, "nothing applied");
}

/// Seed 003's recipe itself (iptables mangle OUTPUT, `ip rule`, table `smtp`) in the
/// host, imported, and the import applied to a fresh copy of the topology: the host's SMTP
/// reaches r2, its https r1.
#[test]
fn seed_003_imported_routes_only_smtp_to_the_second_router() {
    let rt_tables = TempFile::new("rt_tables", "100 smtp\n");
    let saved = {
        let t = SharedLan::new("seed3r");
        recipe::sh(
            &t.host,
            &rt_tables,
            "iptables -t mangle -A OUTPUT -p tcp --dport 25 -j MARK --set-mark 0x2
             ip rule add fwmark 0x2 table smtp
             ip route add default via 192.0.2.2 table smtp",
        );
        Saved::capture(&t.host, &rt_tables)
    };
    let imported = cli::succeeds(
        Command::new(cli::bin())
            .args(["--rt-tables", rt_tables.arg(), "import"])
            .args(saved.args()),
    );
    let cg = Cgroup::new("seed3i");
    // Never the root cgroup in a test.
    let policy = imported.replace(
        "local = true\n",
        &format!("local = true\nlocal_cgroup = \"{}\"\n", cg.path),
    );
    assert!(
        policy.contains(&cg.path),
        "the import hooks local traffic:\n{policy}"
    );
    let t = SharedLan::new("seed3i");
    let file = TempFile::new("imported.toml", &policy);
    cli::ok(
        &t.host,
        &["--rt-tables", rt_tables.arg(), "apply", "-c", file.arg()],
    );
    for (port, at) in [(25, Place::Up2), (443, Place::Up1)] {
        let (a, _) = probe::tcp(&t, &cg, &t.host, REMOTE[0], port);
        assert_eq!(
            a.map(|a| (a.at, a.peer.ip().to_string())),
            Some((at, HOST.to_string())),
            "tcp {port}, imported policy:\n{policy}"
        );
    }
    let got = probe::udp(&t, &cg, &t.host, REMOTE[0], 53, 2);
    assert_eq!(
        got.iter().map(|a| a.at).collect::<Vec<_>>(),
        [Place::Up1; 2],
        "udp, imported policy:\n{policy}"
    );
}
