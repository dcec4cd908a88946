//! `[[set]]` prefix lists: a country-sized list file of mixed prefix lengths (IPv4 and
//! IPv6) routes the listed destinations through isp2. Real packets show where flows went
//! before and after the list changes; a bad list changes nothing.
use policyroute::policy::{
    matcher::Family,
    sets::{parse_list, PrefixSet},
};
use std::time::Duration;

use policyroute_tests::{
    cli,
    daemon::Daemon,
    fixture::{self, TempFile, GATEWAY_ISP2},
    topology::{Place, Topology, LAN_HOST, LAN_HOST6},
};

/// Where packets may go: the listed documentation prefixes. The rest of the list is
/// generated prefixes that no packet is sent to, in every length from /8 to /32 (IPv4) and
/// /16 to /128 (IPv6).
fn list(doc_prefixes: &[&str]) -> String {
    let mut out = String::from("# generated like a country list\n");
    for i in 0..6000u32 {
        let len = 8 + i % 25;
        let addr = (0x0b00_0000u32 + i * 0x0001_3579) & (u32::MAX << (32 - len));
        out.push_str(&format!("{}/{len}\n", std::net::Ipv4Addr::from(addr)));
    }
    for i in 0..3000u32 {
        let len = 16 + i % 113;
        let addr = (0x2a00_u128 << 112) + u128::from(i) * 0x0001_0002_0003_0004_0005_0006_0007;
        let net = ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), len as u8).unwrap();
        out.push_str(&format!("{}\n", net.trunc()));
    }
    for p in doc_prefixes {
        out.push_str(&format!("{p}  # a documentation prefix\n"));
    }
    out
}

fn policy(list_file: &TempFile) -> String {
    let name = list_file.path.file_name().unwrap().to_str().unwrap();
    let rules = format!(
        "[[set]]\nname = \"de\"\nfile = \"{name}\"\n\n[[rule]]\nname = \"to-de\"\nproto = \"udp\"\ndst = \"@de\"\ngateway = \"isp2\"\n"
    );
    fixture::policy(GATEWAY_ISP2, &[&rules], "ingress = [\"lan0\"]\n")
}

fn place(t: &Topology, src: &str, sport: u16, dst: &str) -> Option<Place> {
    t.udp(src, sport, dst, 9999).map(|a| a.at)
}

#[test]
fn a_list_routes_its_destinations_and_follows_edits() {
    let t = Topology::new("sets");
    let first = ["198.18.0.0/24", "2001:db8:ffff::/64"];
    let list_file = TempFile::new("de.txt", &list(&first));
    let policy_file = TempFile::new("policy.toml", &policy(&list_file));
    cli::ok(&t.router, &["apply", "-c", policy_file.arg()]);
    let cases = [
        (LAN_HOST, "198.18.0.1", "198.18.1.1"),
        (LAN_HOST6, "2001:db8:ffff::1", "2001:db8:ffff:1::1"),
    ];
    for (src, listed, other) in cases {
        assert_eq!(place(&t, src, 42000, listed), Some(Place::Up2), "{listed}");
        assert_eq!(place(&t, src, 42001, other), Some(Place::Up1), "{other}");
    }
    let status = cli::json(&t.router, &["status"]);
    let set = &status["sets"][0];
    assert_eq!(set["name"], "de");
    let want = counts(&list(&first));
    assert_eq!((set["ipv4"].as_u64(), set["ipv6"].as_u64()), want, "{set}");
    assert_eq!(set["rules"][0]["name"], "to-de");
    assert!(set["rules"][0]["packets"].as_u64().unwrap() >= 2, "{set}");
    let explain = cli::explain_udp(&t.router, LAN_HOST, None, "198.18.0.1", 9999);
    assert_eq!(explain["rule"], "to-de");
    assert_eq!(explain["sets"][0], "dst @de (198.18.0.0/24)", "{explain}");

    // The list moves to the other addresses: the entries stay, the trie changes.
    list_file.write(&list(&["198.18.1.0/24", "2001:db8:ffff:1::/64"]));
    let report = cli::json(&t.router, &["apply", "-c", policy_file.arg()]);
    let entries = &report["entries"];
    assert_eq!(
        (
            &entries["inserted"],
            &entries["removed"],
            &entries["updated"]
        ),
        (&0.into(), &0.into(), &0.into()),
        "one class before and after: {report}"
    );
    assert!(entries["trie_words"].as_u64().unwrap() > 0, "{report}");
    for (src, was, now) in cases {
        assert_eq!(place(&t, src, 42002, was), Some(Place::Up1), "{was}");
        assert_eq!(place(&t, src, 42003, now), Some(Place::Up2), "{now}");
    }

    // A bad line: refused, naming the file and line, and nothing changes.
    list_file.write("198.18.1.0/24\n# fine so far\n198.18.1.1/24\n");
    let out = cli::run(&t.router, &["apply", "-c", policy_file.arg()]);
    assert!(!out.status.success());
    let name = list_file.path.file_name().unwrap().to_str().unwrap();
    assert!(
        out.stderr.contains(&format!("{name}:3: ")) && out.stderr.contains("host bits"),
        "{}",
        out.stderr
    );
    assert_eq!(place(&t, LAN_HOST, 42004, "198.18.1.1"), Some(Place::Up2));
    let moved = counts(&list(&["198.18.1.0/24", "2001:db8:ffff:1::/64"]));
    assert_eq!(
        cli::json(&t.router, &["status"])["sets"][0]["ipv4"].as_u64(),
        moved.0
    );
}

/// Distinct IPv4 and IPv6 prefixes of a list (the generator repeats some short ones).
fn counts(text: &str) -> (Option<u64>, Option<u64>) {
    let set = PrefixSet::new("x".into(), None, parse_list(text).unwrap());
    let n = |f| Some(set.count(f) as u64);
    (n(Family::V4), n(Family::V6))
}

/// `policyroute run` reads the lists again on SIGHUP, like the policy, with an unchanged
/// policy file; a broken list on SIGHUP keeps the running policy.
#[test]
fn run_reads_the_lists_again_on_sighup() {
    let t = Topology::new("setshup");
    let list_file = TempFile::new("de.txt", "198.18.0.0/24\n2001:db8:ffff::/64\n");
    let policy_file = TempFile::new("policy.toml", &policy(&list_file));
    let d = Daemon::start(&t.router, policy_file.arg(), &[], &[]);
    d.ready();
    assert_eq!(place(&t, LAN_HOST, 42100, "198.18.0.1"), Some(Place::Up2));
    assert_eq!(place(&t, LAN_HOST, 42101, "198.18.1.1"), Some(Place::Up1));

    list_file.write("198.18.1.0/24\n2001:db8:ffff::/64\n");
    d.reload("reload done", 1, Duration::from_secs(10));
    assert_eq!(place(&t, LAN_HOST, 42102, "198.18.0.1"), Some(Place::Up1));
    assert_eq!(place(&t, LAN_HOST, 42103, "198.18.1.1"), Some(Place::Up2));

    list_file.write("");
    d.reload("stays in force", 1, Duration::from_secs(10));
    assert!(d.log_text().contains("is empty"), "{}", d.log_text());
    assert_eq!(place(&t, LAN_HOST, 42104, "198.18.1.1"), Some(Place::Up2));
}
