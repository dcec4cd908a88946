//! Foreign state: routes of others in a gateway's table and others' ip rules whose fwmark
//! matches a gateway's mark. `apply` refuses them by name and changes nothing, its dry run
//! shows them, `apply --adopt` takes them over and real flows then follow the policy; an
//! ip rule on another mark is left alone. A rule that is a twin of policyroute's own but
//! for its protocol is taken over without taking policyroute's with it. `run` refuses them
//! at its start, and what appears while it runs is left in place and reported.
use std::time::Duration;

use policyroute_tests::{
    cli,
    daemon::{within, Daemon},
    fixture::{self, TempFile, GATEWAY_ISP2, RULES_WEB_DNS},
    netns::NetNs,
    topology::{Arrival, Place, Topology, LAN_HOST, LAN_HOST6},
};

/// isp2 (table 100, wan2) for web and DNS, under mark mask 0xff: its mark is 0x1.
fn policy() -> String {
    let gateway = format!("mark_mask = 0xff\n{GATEWAY_ISP2}");
    fixture::policy(&gateway, &[RULES_WEB_DNS], "ingress = [\"lan0\"]")
}

/// The old recipe's objects, as `apply` names them: its default route in table 100 (via
/// the *other* uplink, so flows show whose route is in force) and its fwmark rule.
const OLD_ROUTE: &str = "route -4 table 100: 0.0.0.0/0 via 198.51.100.2 dev wan1 proto boot";
const OLD_RULE: &str = "ip rule -4 100: from all fwmark 0x1/0xffffffff lookup 100";

/// The old recipe's rule and route, and a rule of another tool on mark 0x2, which no
/// gateway of the policy has.
fn old_recipe(ns: &NetNs) {
    ns.ip("route add default via 198.51.100.2 dev wan1 table 100");
    ns.ip("rule add fwmark 0x1 lookup 100 pref 100");
    ns.ip("rule add fwmark 0x2 lookup 200 pref 101");
}

/// What `ip` shows of the rules and routes, both families.
fn routing(ns: &NetNs) -> String {
    [
        "-4 rule show",
        "-6 rule show",
        "-4 route show table all",
        "-6 route show table all",
    ]
    .map(|args| ns.ip(args))
    .join("\n")
}

fn place(a: Option<Arrival>) -> Place {
    a.expect("the flow arrived somewhere").at
}

#[test]
fn apply_refuses_foreign_state_by_name_and_adopt_takes_it_over() {
    let t = Topology::new("foreign");
    old_recipe(&t.router);
    let before = routing(&t.router);
    let file = TempFile::new("foreign.toml", &policy());

    let refused = cli::run(&t.router, &["apply", "-c", file.arg()]);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    for object in [OLD_ROUTE, OLD_RULE] {
        assert!(refused.stdout.contains(object), "{}", refused.stdout);
    }
    assert!(refused.stderr.contains("--adopt"), "{}", refused.stderr);
    assert!(!refused.stdout.contains("0x2"), "{}", refused.stdout);
    assert_eq!(
        routing(&t.router),
        before,
        "a refused apply changes nothing"
    );
    assert!(cli::owned_objects(&t.router).is_empty());

    let dry = cli::ok(&t.router, &["apply", "-c", file.arg(), "--dry-run"]);
    assert!(dry.contains("would refuse"), "{dry}");
    for object in [OLD_ROUTE, OLD_RULE] {
        assert!(dry.contains(object), "{dry}");
    }
    let args = ["apply", "-c", file.arg(), "--dry-run", "--adopt"];
    let dry = cli::json(&t.router, &args);
    assert_eq!(dry["refused"], false, "{dry}");
    assert_eq!(dry["adopted"], true, "{dry}");
    let rules = dry["foreign"]["ip_rules"].as_array().expect("ip_rules");
    assert_eq!(rules.len(), 1, "only the rule on the gateway's mark: {dry}");
    assert_eq!(rules[0]["priority"], 100);
    assert_eq!(rules[0]["fwmark"], serde_json::json!([1, u32::MAX]));
    let routes = dry["foreign"]["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 1, "{dry}");
    assert_eq!(routes[0]["table"], 100);
    assert_eq!(routes[0]["nexthops"][0]["gateway"], "198.51.100.2");
    assert_eq!(routing(&t.router), before, "dry runs change nothing");

    let adopted = cli::ok(&t.router, &["apply", "-c", file.arg(), "--adopt"]);
    for object in [OLD_ROUTE, OLD_RULE] {
        assert!(
            adopted.contains(&format!("did take over {object}")),
            "{adopted}"
        );
    }
    let rules4 = t.router.ip("-4 rule show");
    assert!(!rules4.contains("100:\t"), "{rules4}");
    assert!(
        rules4.contains("101:\tfrom all fwmark 0x2 lookup 200"),
        "another mark's rule stays: {rules4}"
    );
    for family in ["-4", "-6"] {
        let table = t.router.ip(&format!("{family} route show table 100"));
        assert!(
            table.lines().all(|l| l.contains("proto 211")) && table.contains("dev wan2"),
            "{family}: {table}"
        );
    }
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 80)), Place::Up2);
    assert_eq!(
        place(t.tcp(LAN_HOST6, 0, "2001:db8:ffff::1", 443)),
        Place::Up2
    );
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 2222)), Place::Up1);
    let check = cli::run(&t.router, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", check.stdout);
    let again = cli::ok(&t.router, &["apply", "-c", file.arg()]);
    assert!(again.contains("no changes"), "{again}");
}

#[test]
fn run_refuses_at_its_start_and_reports_foreign_state_that_appears_later() {
    let t = Topology::new("foreignd");
    t.router.ip("rule add fwmark 0x1 lookup 100 pref 100");
    let file = TempFile::new("foreignd.toml", &policy());

    let mut refused = Daemon::start(&t.router, file.arg(), &[], &[]);
    let exited = within(Duration::from_secs(20), || refused.exited());
    assert!(exited.is_some(), "still running:\n{}", refused.log_text());
    let log = refused.log_text();
    assert_eq!(refused.stop().and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains(OLD_RULE), "{log}");
    assert!(cli::owned_objects(&t.router).is_empty(), "{log}");

    let d = Daemon::start(&t.router, file.arg(), &["--adopt"], &[]);
    d.ready();
    assert!(d.log_text().contains(&format!("did take over {OLD_RULE}")));
    assert!(!t.router.ip("-4 rule show").contains("100:\t"));

    // Another tool's rule on the gateway's mark, and its route in the place of ours.
    t.router.ip("rule add fwmark 0x1 lookup 100 pref 50");
    t.router
        .ip("route replace default via 198.51.100.2 dev wan1 table 100");
    let warned = "in the policy's way, left in place";
    assert!(
        d.wait_log(warned, 2, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(
        log.contains("ip rule -4 50: from all fwmark 0x1/0xffffffff lookup 100"),
        "{log}"
    );
    assert!(log.contains(OLD_ROUTE), "{log}");
    // Left in place, not fought: through the next passes (a change of ours starts one).
    t.router.ip("-6 route flush table 100");
    assert!(d.wait_log("did add route -6", 1, Duration::from_secs(5)));
    assert!(t
        .router
        .ip("-4 rule show")
        .contains("50:\tfrom all fwmark 0x1 lookup 100"));
    let table = t.router.ip("-4 route show table 100");
    assert!(
        table.contains("default via 198.51.100.2 dev wan1") && !table.contains("proto 211"),
        "{table}"
    );
    assert_eq!(d.log_text().matches(warned).count(), 2, "said once");

    let status = cli::json(&t.router, &["status"]);
    let foreign = cli::items(&status, "drift", |d| d["change"] == "foreign");
    assert_eq!(foreign.len(), 2, "{status}");
    assert!(
        status["warnings"].to_string().contains("--adopt"),
        "{status}"
    );
    let check = cli::run(&t.router, &["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", check.stdout);
    assert!(
        check.stdout.contains("foreign ip rule -4 50:"),
        "{}",
        check.stdout
    );

    t.router.ip("rule del pref 50");
    assert!(
        d.wait_log("gone from the policy's way", 1, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
}

#[test]
fn adopting_a_twin_of_an_own_rule_keeps_the_own_one() {
    let ns = fixture::lone_router("twin");
    let file = TempFile::new("twin.toml", &policy());
    cli::ok(&ns, &["apply", "-c", file.arg()]);
    // isp2's own fwmark rule in all but its protocol (none): deleting it by what the
    // kernel dumped names no protocol, which the kernel reads as any.
    ns.ip("rule add fwmark 0x1/0xff lookup 100 pref 10001");
    let refused = cli::run(&ns, &["apply", "-c", file.arg()]);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    let twin = "ip rule -4 10001: from all fwmark 0x1/0xff lookup 100 proto unspec";
    assert!(refused.stdout.contains(twin), "{}", refused.stdout);
    let adopted = cli::ok(&ns, &["apply", "-c", file.arg(), "--adopt"]);
    assert!(
        adopted.contains(&format!("did take over {twin}")),
        "{adopted}"
    );
    let rules = ns.ip("-4 rule show");
    let at_10001: Vec<&str> = rules.lines().filter(|l| l.starts_with("10001:")).collect();
    assert_eq!(
        at_10001,
        vec!["10001:\tfrom all fwmark 0x1/0xff lookup 100 proto 211"],
        "{rules}"
    );
    let check = cli::run(&ns, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", check.stdout);
}
