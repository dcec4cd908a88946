//! `policyroute import` on each recipe of the seeds (`../shared/seeds/`): the recipe is set
//! up with real `iptables` and `ip` in a test router, real flows show where it sends them,
//! its saved text is imported, and the imported policy, applied to a fresh router, must
//! send the same flows to the same upstreams. What the import cannot express is asserted
//! to be listed.
//!
//! The recipes' addresses and devices are rewritten to the test topology: the LAN is
//! `lan0` (192.0.2.0/25), the main uplink `wan1` (default via 198.51.100.2), the other
//! uplink (a VPN, a second provider, a cheap line) `wan2` via 203.0.113.2.
use std::{
    net::{SocketAddr, TcpListener},
    process::Command,
};

use policyroute_tests::{
    cgroup::Cgroup,
    cli,
    fixture::TempFile,
    netns::NetNs,
    probe,
    recipe::{self, Saved},
    topology::{self, Place, Topology, LAN_HOST, LAN_HOST6, LAN_HOST_ALT},
};

/// A forwarded flow from the LAN: protocol, source, source port, destination, port.
type Forwarded = (&'static str, &'static str, u16, &'static str, u16);
/// A flow of the router itself (TCP): destination and port.
type Local = (&'static str, u16);

#[derive(Default)]
struct Recipe {
    tag: &'static str,
    rt_tables: &'static str,
    /// The recipe's commands, run in the router.
    setup: &'static str,
    forwarded: &'static [(Forwarded, Place)],
    local: &'static [(Local, Place)],
    /// Each must appear in what the import lists as not expressed; none listed when empty.
    listed: &'static [&'static str],
    /// More checks in the recipe's router and the imported policy's.
    extra: Option<fn(&Topology, Stage)>,
    /// Text the imported policy must have, and text it must not.
    written: &'static [&'static str],
    not_written: &'static [&'static str],
}

/// Which router an extra check runs in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Recipe,
    Imported,
}

fn apply(t: &Topology, rt_tables: &TempFile, policy: &str) {
    let file = TempFile::new("imported.toml", policy);
    cli::ok(
        &t.router,
        &["--rt-tables", rt_tables.arg(), "apply", "-c", file.arg()],
    );
}

struct Imported {
    policy: String,
    unexpressed: Vec<String>,
}

/// The flows of `r` go where the recipe says, in `t` (policy or iptables alike).
fn check_flows(r: &Recipe, t: &Topology, cg: &Cgroup, setup: &str) {
    for &((proto, src, sport, dst, dport), want) in r.forwarded {
        let got = t.flow(proto, src, sport, dst, dport).map(|a| a.at);
        assert_eq!(
            got,
            Some(want),
            "{setup}: {proto} {src}:{sport} -> {dst}:{dport}"
        );
    }
    for &((dst, port), want) in r.local {
        let (got, _) = probe::tcp(t, cg, &t.router, dst, port);
        assert_eq!(
            got.map(|a| a.at),
            Some(want),
            "{setup}: router tcp -> {dst}:{port}"
        );
    }
}

fn import(saved: &Saved, rt_tables: &TempFile) -> Imported {
    let out = Command::new(cli::bin())
        .args(["--rt-tables", rt_tables.arg(), "import", "--json"])
        .args(saved.args())
        .output()
        .expect("run policyroute import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let unexpressed: Vec<String> = json["unexpressed"]
        .as_array()
        .expect("unexpressed")
        .iter()
        .map(|n| n["text"].as_str().expect("text").to_owned())
        .collect();
    for text in &unexpressed {
        assert!(stderr.contains(text.as_str()), "not on stderr: {text}");
    }
    Imported {
        policy: json["policy"].as_str().expect("policy").to_owned(),
        unexpressed,
    }
}

/// The whole round: the recipe in one router, its import applied in a fresh one.
fn check_recipe(r: &Recipe) {
    let rt_tables = TempFile::new("rt_tables", r.rt_tables);
    let cg = Cgroup::new(r.tag);
    let saved = {
        let t = Topology::new(&format!("{}-orig", r.tag));
        recipe::sh(&t.router, &rt_tables, r.setup);
        check_flows(r, &t, &cg, "recipe");
        if let Some(extra) = r.extra {
            extra(&t, Stage::Recipe);
        }
        Saved::capture(&t.router, &rt_tables)
    };
    let imported = import(&saved, &rt_tables);
    // Shown with the failure of any check below.
    eprintln!("{}: imported policy:\n{}", r.tag, imported.policy);
    for want in r.listed {
        assert!(
            imported.unexpressed.iter().any(|n| n.contains(want)),
            "{want:?} is not listed in {:#?}",
            imported.unexpressed
        );
    }
    if r.listed.is_empty() {
        assert_eq!(imported.unexpressed, Vec::<String>::new());
    }
    for want in r.written {
        assert!(imported.policy.contains(want), "{want:?} is not written");
    }
    for unwanted in r.not_written {
        assert!(
            !imported.policy.contains(unwanted),
            "{unwanted:?} is written"
        );
    }
    // Never the root cgroup in a test: the host's own sockets are not the test's.
    let policy = imported.policy.replace(
        "local = true\n",
        &format!("local = true\nlocal_cgroup = \"{}\"\n", cg.path),
    );
    let t = Topology::new(&format!("{}-imp", r.tag));
    apply(&t, &rt_tables, &policy);
    check_flows(r, &t, &cg, &format!("imported policy\n{policy}"));
    if let Some(extra) = r.extra {
        extra(&t, Stage::Imported);
    }
}

/// Whether a TCP connection from an internet address behind the upstream `from` to
/// `server`, listening in `ns`, is established: the answer must leave through `from`'s
/// link (main's default route points at another).
fn reachable_from(t: &Topology, ns: &NetNs, server: SocketAddr, from: Place) -> bool {
    let _listener = {
        let _in = ns.enter();
        TcpListener::bind(server).expect("server")
    };
    let _in = t.ns(from).enter();
    let client = topology::INTERNET[0].parse().expect("address");
    topology::connect(client, 0, server).is_some()
}

/// [`reachable_from`] for the router's web server on its address on `from`'s link.
fn router_web_reachable_from(t: &Topology, from: Place) -> bool {
    let router = from.router_address(false).parse().expect("address");
    reachable_from(t, &t.router, SocketAddr::new(router, 80), from)
}

/// The listed limitation of seed 000, with real packets. The recipe sends every answer
/// from port 80 through the VPN: a web client on the VPN's side is answered, one on the
/// main uplink's side is not. The imported policy answers both through the link the
/// router's address belongs to (a local gateway's `from` rule), not by the rule.
fn router_web_over_the_vpn(t: &Topology, stage: Stage) {
    let via_main = stage == Stage::Imported;
    assert!(router_web_reachable_from(t, Place::Up2), "from the VPN");
    assert_eq!(
        router_web_reachable_from(t, Place::Up1),
        via_main,
        "from the main uplink"
    );
}

/// Seed 000: port 80 of the router reachable over a VPN. The recipe breaks off before its
/// command; the mark it describes is the router's web replies (`--sport 80`) in OUTPUT.
/// The local hooks classify connects and sends, not a server's replies: listed, and shown
/// with web clients on both sides. Other traffic of the router keeps the main uplink in
/// both.
#[test]
fn seed_000_router_port_over_the_vpn() {
    check_recipe(&Recipe {
        tag: "imp0",
        rt_tables: "",
        setup: "iptables -t mangle -A OUTPUT -p tcp --sport 80 -j MARK --set-mark 1
                ip rule add fwmark 1 table 100
                ip route add default via 203.0.113.2 dev wan2 table 100",
        forwarded: &[],
        local: &[
            (("198.18.0.1", 443), Place::Up1),
            (("198.18.0.1", 80), Place::Up1),
        ],
        listed: &["replies of a TCP server are not classified"],
        extra: Some(router_web_over_the_vpn),
        ..Recipe::default()
    });
}

/// Seed 001 (linux-ip.net multi-internet): web traffic of the office network to provider
/// 2, table 4 a copy of main with another default route, SNAT per uplink. The NAT rules
/// are not routing policy: listed. Office network 192.168.99.0/24 is 192.0.2.0/26 here
/// (LAN_HOST inside, LAN_HOST_ALT outside), eth4 is wan2, eth1 wan1.
#[test]
fn seed_001_office_web_via_provider_2() {
    check_recipe(&Recipe {
        tag: "imp1",
        rt_tables: "",
        // A fresh router has no table 4 to flush.
        setup: "ip route flush table 4 2>/dev/null || true
                ip route show table main | grep -Ev ^default | while read ROUTE; do
                    ip route add table 4 $ROUTE
                done
                ip route add table 4 default via 203.0.113.2
                iptables -t mangle -A PREROUTING -p tcp --dport 80 -s 192.0.2.0/26 -j MARK --set-mark 4
                iptables -t mangle -A PREROUTING -p tcp --dport 443 -s 192.0.2.0/26 -j MARK --set-mark 4
                iptables -t nat -A POSTROUTING -o wan2 -j SNAT --to-source 203.0.113.1
                iptables -t nat -A POSTROUTING -o wan1 -j SNAT --to-source 198.51.100.1
                ip rule add fwmark 4 table 4",
        forwarded: &[
            (("tcp", LAN_HOST, 41001, "198.18.0.1", 80), Place::Up2),
            (("tcp", LAN_HOST, 41002, "198.18.1.1", 443), Place::Up2),
            (("tcp", LAN_HOST, 41003, "198.18.0.1", 22), Place::Up1),
            (("udp", LAN_HOST, 41004, "198.18.0.1", 80), Place::Up1),
            (("tcp", LAN_HOST_ALT, 41005, "198.18.0.1", 80), Place::Up1),
        ],
        local: &[],
        listed: &["table nat: 2 rule(s)"],
        extra: None,
        ..Recipe::default()
    });
}

/// Seed 001 with the exception its text suggests for such setups ("exclude certain
/// hosts"): a RETURN ahead of the MARK rules, which the import writes as a rule of mark 0.
#[test]
fn seed_001_with_a_host_excepted_by_return() {
    check_recipe(&Recipe {
        tag: "imp1r",
        rt_tables: "",
        setup: "ip route add table 4 default via 203.0.113.2
                iptables -t mangle -A PREROUTING -s 192.0.2.10 -j RETURN
                iptables -t mangle -A PREROUTING -p tcp --dport 80 -s 192.0.2.0/25 -j MARK --set-mark 4
                ip rule add fwmark 4 table 4",
        forwarded: &[
            (("tcp", LAN_HOST, 41101, "198.18.0.1", 80), Place::Up1),
            (("tcp", LAN_HOST_ALT, 41102, "198.18.0.1", 80), Place::Up2),
            (("tcp", LAN_HOST_ALT, 41103, "198.18.0.1", 22), Place::Up1),
        ],
        local: &[],
        listed: &[],
        extra: None,
        ..Recipe::default()
    });
}

/// Seed 002 (LARTC): outgoing mail from eth0 (here lan0) through the cheap line, table
/// `mail.out` by name. Everything is expressible; IPv6 mail keeps main in both (the
/// recipe is IPv4 only).
#[test]
fn seed_002_mail_out_by_table_name() {
    check_recipe(&Recipe {
        tag: "imp2",
        rt_tables: "201 mail.out\n",
        setup: "iptables -A PREROUTING -i lan0 -t mangle -p tcp --dport 25 -j MARK --set-mark 1
                ip rule add fwmark 1 table mail.out
                ip route add default via 203.0.113.2 dev wan2 table mail.out",
        forwarded: &[
            (("tcp", LAN_HOST, 42001, "198.18.0.1", 25), Place::Up2),
            (("tcp", LAN_HOST_ALT, 42002, "198.18.1.1", 25), Place::Up2),
            (("tcp", LAN_HOST, 42003, "198.18.0.1", 80), Place::Up1),
            (("udp", LAN_HOST, 42004, "198.18.0.1", 25), Place::Up1),
            (
                ("tcp", LAN_HOST6, 42005, "2001:db8:ffff::1", 25),
                Place::Up1,
            ),
        ],
        local: &[],
        listed: &[],
        extra: None,
        ..Recipe::default()
    });
}

/// Seed 002 written for both families, as a dual-stack router has it: the same mail rule
/// in iptables and ip6tables (one policy rule), an IPv6-only web rule, fwmark rules and
/// default routes in `mail.out` for both.
#[test]
fn seed_002_for_ipv4_and_ipv6() {
    check_recipe(&Recipe {
        tag: "imp2b",
        rt_tables: "201 mail.out\n",
        setup: "iptables -A PREROUTING -i lan0 -t mangle -p tcp --dport 25 -j MARK --set-mark 1
                ip6tables -A PREROUTING -i lan0 -t mangle -p tcp --dport 25 -j MARK --set-mark 1
                ip6tables -t mangle -A PREROUTING -i lan0 -s 2001:db8:1::/64 -p tcp --dport 443 -j MARK --set-mark 1
                ip rule add fwmark 1 table mail.out
                ip -6 rule add fwmark 1 table mail.out
                ip route add default via 203.0.113.2 dev wan2 table mail.out
                ip -6 route add default via 2001:db8:b::2 dev wan2 table mail.out",
        forwarded: &[
            (("tcp", LAN_HOST, 43001, "198.18.0.1", 25), Place::Up2),
            (("tcp", LAN_HOST6, 43002, "2001:db8:ffff::1", 25), Place::Up2),
            (("tcp", LAN_HOST6, 43003, "2001:db8:ffff::1", 443), Place::Up2),
            (("tcp", LAN_HOST, 43004, "198.18.0.1", 443), Place::Up1),
            (("udp", LAN_HOST6, 43005, "2001:db8:ffff::1", 25), Place::Up1),
        ],
        local: &[],
        listed: &[],
        extra: None,
        ..Recipe::default()
    });
}

/// Seed 003 (RHEL4): SMTP generated by the box itself through another gateway, table
/// `smtp`. (The recipe's `table smtp.` has a stray dot that `ip` refuses.) The OUTPUT
/// re-route keeps the source the main route chose, so the recipe needs a MASQUERADE for
/// replies to come back; it is listed as not routing policy, which the policy does not
/// need: it gives the gateway's source address.
#[test]
fn seed_003_local_smtp_by_table_name() {
    check_recipe(&Recipe {
        tag: "imp3",
        rt_tables: "100 smtp\n",
        setup: "iptables -t mangle -A OUTPUT -p tcp --dport 25 -j MARK --set-mark 0x2
                iptables -t nat -A POSTROUTING -o wan2 -j MASQUERADE
                ip rule add fwmark 0x2 table smtp
                ip route add default via 203.0.113.2 table smtp",
        forwarded: &[],
        local: &[
            (("198.18.0.1", 25), Place::Up2),
            (("198.18.1.1", 25), Place::Up2),
            (("198.18.0.1", 587), Place::Up1),
        ],
        listed: &["table nat: 1 rule(s)"],
        extra: None,
        ..Recipe::default()
    });
}

/// Seed 004: the host's SSH through the secondary connection (eth1 here wan2), table
/// `table_ssh`; MASQUERADE as in seed 003.
#[test]
fn seed_004_local_ssh_by_table_name() {
    check_recipe(&Recipe {
        tag: "imp4",
        rt_tables: "100 table_ssh\n",
        setup: "iptables -t mangle -A OUTPUT -p tcp --dport 22 -j MARK --set-mark 1
                iptables -t nat -A POSTROUTING -o wan2 -j MASQUERADE
                ip route add default via 203.0.113.2 dev wan2 table table_ssh
                ip rule add fwmark 1 table table_ssh",
        forwarded: &[],
        local: &[
            (("198.18.0.1", 22), Place::Up2),
            (("198.18.0.1", 25), Place::Up1),
            (("2001:db8:ffff::1", 22), Place::Up1),
        ],
        listed: &["table nat: 1 rule(s)"],
        extra: None,
        ..Recipe::default()
    });
}

/// Seed 001's office rules kept in a user-defined chain, as larger firewalls do, with a
/// host sent to provider 2 by its source (`ip rule add from`). The jump is followed (its
/// `-i lan0 -p tcp` narrows the chain's rules), the chain's RETURN becomes a rule of mark
/// 0, and the `from` rule, after the fwmark rule, decides what no mark routes: also what
/// the RETURN leaves unmarked.
#[test]
fn seed_001_rules_in_a_user_chain_and_a_host_by_its_source() {
    check_recipe(&Recipe {
        tag: "imp5",
        setup: "ip route add table 100 default via 203.0.113.2 dev wan2
                iptables -t mangle -N OFFICE
                iptables -t mangle -A PREROUTING -i lan0 -p tcp -j OFFICE
                iptables -t mangle -A OFFICE -d 198.18.1.0/24 -j RETURN
                iptables -t mangle -A OFFICE -p tcp -m multiport --dports 80,443 -j MARK --set-mark 4
                iptables -t mangle -A OFFICE -j RETURN
                ip rule add fwmark 4 table 100 pref 1000
                ip rule add from 192.0.2.10 table 100 pref 2000",
        forwarded: &[
            (("tcp", LAN_HOST_ALT, 45001, "198.18.0.1", 80), Place::Up2),
            (("tcp", LAN_HOST_ALT, 45002, "198.18.0.1", 443), Place::Up2),
            (("tcp", LAN_HOST_ALT, 45003, "198.18.1.1", 80), Place::Up1),
            (("tcp", LAN_HOST_ALT, 45004, "198.18.0.1", 22), Place::Up1),
            (("udp", LAN_HOST_ALT, 45005, "198.18.0.1", 80), Place::Up1),
            (("tcp", LAN_HOST, 45006, "198.18.0.1", 22), Place::Up2),
            (("tcp", LAN_HOST, 45007, "198.18.1.1", 80), Place::Up2),
            (("udp", LAN_HOST, 45008, "198.18.0.1", 53), Place::Up2),
        ],
        written: &[
            "src = \"192.0.2.10/32\"",
            "(PREROUTING, -j OFFICE at line",
            "ingress = [\"lan0\"]",
        ],
        ..Recipe::default()
    });
}

/// A LAN server reached through uplink 2 answers through it: the TCP handshake completes.
fn lan_server_over_uplink_2(t: &Topology, _: Stage) {
    let server = SocketAddr::new(LAN_HOST.parse().expect("address"), 8080);
    assert!(reachable_from(t, &t.lan, server, Place::Up2), "LAN server");
    assert!(router_web_reachable_from(t, Place::Up2), "router's server");
}

/// The classic CONNMARK recipe for two uplinks: connections that come in through wan2 are
/// marked, the mark saved with the connection and restored for its later packets (the
/// replies included), so they leave through wan2 although main's default route is wan1;
/// mail of the LAN goes there too. The imported policy's gateway is sticky (the rule
/// marking what comes in on wan2 is what `sticky` does), shown with a LAN server and the
/// router's own reached from uplink 2: without `sticky` their answers leave through wan1
/// and are lost (tests/tests/sticky.rs shows that control).
#[test]
fn connmark_save_and_restore_becomes_a_sticky_gateway() {
    check_recipe(&Recipe {
        tag: "imp6",
        setup: "ip route add table 102 default via 203.0.113.2 dev wan2
                ip route add table 102 192.0.2.0/25 dev lan0
                iptables -t mangle -A PREROUTING -j CONNMARK --restore-mark
                iptables -t mangle -A PREROUTING -m mark ! --mark 0 -j ACCEPT
                iptables -t mangle -A PREROUTING -i wan2 -m conntrack --ctstate NEW -j MARK --set-mark 2
                iptables -t mangle -A PREROUTING -i lan0 -p tcp --dport 25 -j MARK --set-mark 2
                iptables -t mangle -A PREROUTING -j CONNMARK --save-mark
                iptables -t mangle -A OUTPUT -j CONNMARK --restore-mark
                ip rule add fwmark 2 table 102",
        forwarded: &[
            (("tcp", LAN_HOST, 46001, "198.18.0.1", 25), Place::Up2),
            (("tcp", LAN_HOST, 46002, "198.18.0.1", 80), Place::Up1),
        ],
        extra: Some(lan_server_over_uplink_2),
        written: &["sticky = true\n", "ingress = [\"lan0\"]"],
        ..Recipe::default()
    });
}

/// Seed 003's mail of the box itself, with a PREROUTING that marks nothing (its RETURN
/// skips no MARK rule): the imported policy hooks the host's sockets and no device, so
/// the LAN's mail keeps the main uplink as in the recipe.
#[test]
fn an_output_only_recipe_classifies_no_forwarded_traffic() {
    check_recipe(&Recipe {
        tag: "imp7",
        rt_tables: "100 smtp\n",
        setup: "iptables -t mangle -A PREROUTING -d 192.0.2.0/24 -j RETURN
                iptables -t mangle -A OUTPUT -p tcp --dport 25 -j MARK --set-mark 0x2
                iptables -t nat -A POSTROUTING -o wan2 -j MASQUERADE
                ip rule add fwmark 0x2 table smtp
                ip route add default via 203.0.113.2 table smtp",
        forwarded: &[(("tcp", LAN_HOST, 47001, "198.18.0.1", 25), Place::Up1)],
        local: &[
            (("198.18.0.1", 25), Place::Up2),
            (("198.18.0.1", 587), Place::Up1),
        ],
        listed: &["table nat: 1 rule(s)"],
        written: &["local = true\n"],
        not_written: &["ingress"],
        ..Recipe::default()
    });
}

/// Without root or namespaces: stdin as an input, and a malformed file refused with its
/// line, nothing written.
#[test]
fn stdin_input_and_a_malformed_file() {
    use std::io::Write;
    let rules = TempFile::new("rules.txt", "100:\tfrom all fwmark 0x1 lookup 101\n");
    let routes = TempFile::new("routes.txt", "default via 203.0.113.2 dev wan2 table 101\n");
    let mut child = Command::new(cli::bin())
        .args(["import", "--iptables-save", "-", "--ip-rule", rules.arg()])
        .args(["--ip-route", routes.arg()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run import");
    let save = "*mangle\n-A PREROUTING -i lan0 -p udp --dport 53 -j MARK --set-mark 1\nCOMMIT\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(save.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("import");
    let policy = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(policy.contains("# <stdin>:2 (PREROUTING)"), "{policy}");
    assert!(policy.contains("gateway = \"table-101\""), "{policy}");

    let broken = TempFile::new(
        "broken.save",
        "*mangle\n-A PREROUTING -p tcp --dport x -j MARK --set-mark 1\n",
    );
    let written = TempFile::new("never.toml", "");
    let out = Command::new(cli::bin())
        .args([
            "import",
            "--iptables-save",
            broken.arg(),
            "-o",
            written.arg(),
        ])
        .output()
        .expect("run import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken.save:2: invalid port list \"x\""),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(written.arg()).unwrap(), "");
}

/// Without root or namespaces: an input that cannot be read, an output that cannot be
/// written and an --rt-tables file that cannot be read are each named with the OS's cause,
/// and nothing is printed as a policy.
#[test]
fn files_it_cannot_read_or_write_are_named_with_the_os_cause() {
    let save = TempFile::new("ok.save", "*mangle\nCOMMIT\n");
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("prt-import-missing-{}.save", std::process::id()));
    let unwritable = dir
        .join(format!("prt-import-no-dir-{}", std::process::id()))
        .join("policy.toml");
    let cases: [(&[&str], String); 3] = [
        (
            &["import", "--iptables-save", missing.to_str().unwrap()],
            format!("reading {}: No such file or directory", missing.display()),
        ),
        (
            &[
                "import",
                "--iptables-save",
                save.arg(),
                "-o",
                unwritable.to_str().unwrap(),
            ],
            format!(
                "writing {}: No such file or directory",
                unwritable.display()
            ),
        ),
        (
            &[
                "--rt-tables",
                missing.to_str().unwrap(),
                "import",
                "--iptables-save",
                save.arg(),
            ],
            format!("{}: No such file or directory", missing.display()),
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(cli::bin())
            .args(args)
            .output()
            .expect("run import");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(&want), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: a policy was printed");
    }
}
