//! `policyroute::netlink` against the kernel, each test in a throwaway network namespace, with
//! `ip` as the independent witness of what was installed.
use ipnet::IpNet;
use policyroute::{
    kernel::netlink::{Netlink, NetlinkError, RouteQuery, RTPROT_POLICYROUTE as PROTO},
    plan::objects::{IpRoute, IpRule},
    policy::matcher::Family,
};
use policyroute_tests::{
    fixture::{address, ip, loose_veths},
    netns::NetNs,
};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Creates a namespace with links `d0` (192.0.2.1/24, 2001:db8::1/64; gateways .254 and ::fe live
/// there) and `p0` (no addresses, stands for a point-to-point link), then runs `body` with a
/// connection opened inside it. The runtime is built inside the namespace too: netlink
/// sockets bind to the namespace of the thread that creates them.
fn in_netns<T>(tag: &str, body: impl AsyncFnOnce(&NetNs, Netlink) -> T) -> T {
    let ns = NetNs::new(tag);
    loose_veths(&ns, &["d0", "p0"]);
    address(&ns, "d0", "192.0.2.1/24");
    address(&ns, "d0", "2001:db8::1/64");
    let _inside = ns.enter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let netlink = Netlink::new().unwrap();
        body(&ns, netlink).await
    })
}

fn fwmark_rule(family: Family, priority: u32, table: u32, mark: (u32, u32)) -> IpRule {
    IpRule {
        family,
        priority,
        table,
        fwmark: Some(mark),
        suppress_prefixlen: None,
        src: None,
    }
}

fn from_rule(priority: u32, table: u32, src: &str) -> IpRule {
    let src = net(src);
    IpRule {
        family: Family::of_net(&src),
        priority,
        table,
        fwmark: None,
        suppress_prefixlen: None,
        src: Some(src),
    }
}

fn suppress_rule(family: Family, priority: u32) -> IpRule {
    IpRule {
        family,
        priority,
        table: 254,
        fwmark: None,
        suppress_prefixlen: Some(0),
        src: None,
    }
}

fn route(table: u32, dst: &str, gateway: Option<&str>, oif: u32) -> IpRoute {
    let dst = net(dst);
    IpRoute {
        family: Family::of_net(&dst),
        table,
        dst,
        gateway: gateway.map(ip),
        oif,
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// The line of `ip [-6] rule show` for priority `prio`.
fn rule_line(ns: &NetNs, family: &str, prio: u32) -> Option<String> {
    let out = ns.exec("ip", &[family, "rule", "show"]);
    let prefix = format!("{prio}:");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_owned)
}

async fn link(nl: &Netlink, name: &str) -> u32 {
    nl.link_index(name).await.unwrap().unwrap()
}

async fn add_rules(nl: &Netlink, rules: &[IpRule]) {
    for rule in rules {
        nl.add_rule(rule, PROTO).await.unwrap();
    }
}

async fn add_routes(nl: &Netlink, routes: &[IpRoute]) {
    for route in routes {
        nl.add_route(route, PROTO).await.unwrap();
    }
}

fn exists<T>(r: &Result<T, NetlinkError>) -> bool {
    matches!(r, Err(NetlinkError::Exists { .. }))
}

fn not_found<T>(r: &Result<T, NetlinkError>) -> bool {
    matches!(r, Err(NetlinkError::NotFound { .. }))
}

fn ours() -> Vec<IpRule> {
    vec![
        fwmark_rule(Family::V4, 100, 100, (4, 0xff)),
        fwmark_rule(Family::V6, 100, 100, (4, 0xff)),
        fwmark_rule(Family::V4, 101, 1000, (0, 0xff00)),
        suppress_rule(Family::V4, 90),
        suppress_rule(Family::V6, 90),
        from_rule(110, 1000, "198.51.100.0/24"),
        from_rule(110, 1000, "2001:db8:1::/48"),
    ]
}

#[test]
fn rules_read_back_equal_and_only_ours() {
    in_netns("rules", async |ns, nl| {
        // Someone else's rule, the same shape as one of ours but another protocol.
        ns.ip("rule add priority 100 fwmark 4/0xff lookup 100");
        ns.ip("rule add priority 120 fwmark 7 lookup 100 protocol static");
        add_rules(&nl, &ours()).await;
        assert_eq!(sorted(nl.rules(PROTO).await.unwrap()), sorted(ours()));
        assert_eq!(
            nl.rules(4).await.unwrap(),
            vec![fwmark_rule(Family::V4, 120, 100, (7, u32::MAX))]
        );

        for (family, prio, want) in [
            ("-4", 101, "fwmark 0/0xff00 lookup 1000 proto 211"),
            ("-6", 100, "fwmark 0x4/0xff lookup 100 proto 211"),
            ("-4", 90, "lookup main suppress_prefixlength 0 proto 211"),
            ("-6", 110, "from 2001:db8:1::/48 lookup 1000 proto 211"),
        ] {
            let line = rule_line(ns, family, prio).unwrap();
            assert!(line.contains(want), "{line}");
        }
    });
}

#[test]
fn rule_add_twice_exists_and_del_removes_exactly_it() {
    in_netns("ruledel", async |ns, nl| {
        ns.ip("rule add priority 100 fwmark 4/0xff lookup 100 protocol static");
        add_rules(&nl, &ours()).await;
        let v4 = fwmark_rule(Family::V4, 100, 100, (4, 0xff));
        let again = nl.add_rule(&v4, PROTO).await;
        assert!(exists(&again), "{again:?}");

        nl.del_rule(&v4, PROTO).await.unwrap();
        let mut rest = ours();
        rest.retain(|r| r != &v4);
        assert_eq!(sorted(nl.rules(PROTO).await.unwrap()), sorted(rest.clone()));
        // The static twin and the IPv6 twin survive.
        let line = rule_line(ns, "-4", 100).unwrap();
        assert!(line.contains("proto static"), "{line}");
        assert!(rule_line(ns, "-6", 100).is_some());

        let gone = nl.del_rule(&v4, PROTO).await;
        assert!(not_found(&gone), "{gone:?}");
        for rule in &rest {
            nl.del_rule(rule, PROTO).await.unwrap();
        }
        assert_eq!(nl.rules(PROTO).await.unwrap(), vec![]);
        assert_eq!(nl.rules(4).await.unwrap().len(), 1);
    });
}

#[test]
fn routes_read_back_equal_and_delete() {
    in_netns("routes", async |ns, nl| {
        let (d0, p0) = (link(&nl, "d0").await, link(&nl, "p0").await);
        ns.ip("route add 198.51.100.0/24 via 192.0.2.254 table 100 proto static");
        let routes = vec![
            route(100, "0.0.0.0/0", Some("192.0.2.254"), d0),
            route(100, "::/0", Some("2001:db8::fe"), d0),
            route(1000, "0.0.0.0/0", None, p0),
            route(1000, "::/0", None, p0),
            route(1000, "203.0.113.0/24", Some("192.0.2.254"), d0),
            route(1000, "2001:db8:2::/48", Some("2001:db8::fe"), d0),
        ];
        add_routes(&nl, &routes).await;
        assert_eq!(
            sorted(nl.routes(PROTO).await.unwrap()),
            sorted(routes.clone())
        );

        for (show, want) in [
            (
                "route show table 100",
                "default via 192.0.2.254 dev d0 proto 211",
            ),
            (
                "route show table 100",
                "198.51.100.0/24 via 192.0.2.254 dev d0 proto static",
            ),
            (
                "-6 route show table 100",
                "default via 2001:db8::fe dev d0 proto 211",
            ),
            (
                "route show table 1000",
                "default dev p0 proto 211 scope link",
            ),
            (
                "route show table 1000",
                "203.0.113.0/24 via 192.0.2.254 dev d0 proto 211",
            ),
        ] {
            let table = ns.ip(show);
            assert!(table.contains(want), "{table}");
        }

        let again = nl.add_route(&routes[0], PROTO).await;
        assert!(exists(&again), "{again:?}");
        let other_gateway = route(100, "0.0.0.0/0", Some("192.0.2.253"), d0);
        let again = nl.add_route(&other_gateway, PROTO).await;
        assert!(exists(&again), "{again:?}");
        let other_gateway = route(100, "::/0", Some("2001:db8::fd"), d0);
        let again = nl.add_route(&other_gateway, PROTO).await;
        assert!(exists(&again), "no v6 multipath: {again:?}");

        for r in &routes {
            nl.del_route(r, PROTO).await.unwrap();
        }
        assert_eq!(nl.routes(PROTO).await.unwrap(), vec![]);
        for r in &routes[..2] {
            let gone = nl.del_route(r, PROTO).await;
            assert!(not_found(&gone), "{gone:?}");
        }
        let t100 = ns.ip("route show table 100");
        assert_eq!(
            t100.trim(),
            "198.51.100.0/24 via 192.0.2.254 dev d0 proto static"
        );
        assert_eq!(nl.routes(4).await.unwrap().len(), 1);
    });
}

#[test]
fn del_route_needs_the_same_protocol() {
    in_netns("routeproto", async |ns, nl| {
        let d0 = link(&nl, "d0").await;
        ns.ip("route add default via 192.0.2.254 table 100 proto static");
        let theirs = route(100, "0.0.0.0/0", Some("192.0.2.254"), d0);
        let r = nl.del_route(&theirs, PROTO).await;
        assert!(not_found(&r), "{r:?}");
        assert_eq!(nl.routes(4).await.unwrap(), vec![theirs]);
    });
}

#[test]
fn route_get_follows_the_mark() {
    in_netns("routeget", async |ns, nl| {
        let (d0, p0) = (link(&nl, "d0").await, link(&nl, "p0").await);
        ns.ip("route add default via 192.0.2.253");
        ns.ip("-6 route add default via 2001:db8::fd");
        for family in [Family::V4, Family::V6] {
            add_rules(
                &nl,
                &[
                    fwmark_rule(family, 100, 100, (4, 0xff)),
                    fwmark_rule(family, 101, 1000, (5, 0xff)),
                ],
            )
            .await;
        }
        add_routes(
            &nl,
            &[
                route(100, "0.0.0.0/0", Some("192.0.2.254"), d0),
                route(100, "::/0", Some("2001:db8::fe"), d0),
                route(1000, "0.0.0.0/0", None, p0),
                route(1000, "::/0", None, p0),
            ],
        )
        .await;

        let get = async |dst: &str, mark: u32| nl.route_get(&RouteQuery::new(ip(dst), mark)).await;
        let a = get("203.0.113.9", 4).await.unwrap();
        assert_eq!(
            (a.table, a.gateway, a.oif),
            (100, Some(ip("192.0.2.254")), Some(d0))
        );
        assert_eq!(a.prefsrc, Some(ip("192.0.2.1")));
        let a = get("203.0.113.9", 0x304).await.unwrap();
        assert_eq!(
            (a.table, a.gateway),
            (100, Some(ip("192.0.2.254"))),
            "mask 0xff"
        );
        let a = get("203.0.113.9", 0).await.unwrap();
        assert_eq!(
            (a.table, a.gateway, a.oif),
            (254, Some(ip("192.0.2.253")), Some(d0))
        );
        let a = get("203.0.113.9", 5).await.unwrap();
        assert_eq!((a.table, a.gateway, a.oif), (1000, None, Some(p0)));

        let a = get("2001:db8:2::9", 4).await.unwrap();
        assert_eq!(
            (a.table, a.gateway, a.oif),
            (100, Some(ip("2001:db8::fe")), Some(d0))
        );
        let a = get("2001:db8:2::9", 0).await.unwrap();
        assert_eq!((a.table, a.gateway), (254, Some(ip("2001:db8::fd"))));
        let a = get("2001:db8:2::9", 5).await.unwrap();
        assert_eq!((a.table, a.gateway, a.oif), (1000, None, Some(p0)));

        // Ports and protocol are accepted (they matter to rules with ipproto/dport).
        let mut q = RouteQuery::new(ip("203.0.113.9"), 4);
        (q.proto, q.sport, q.dport) = (Some(6), Some(40000), Some(443));
        assert_eq!(nl.route_get(&q).await.unwrap().table, 100);
    });
}

#[test]
fn route_get_as_if_arrived_on_a_link() {
    in_netns("routeiif", async |ns, nl| {
        // IPv4 input lookups route only when forwarding (this namespace's sysctl only).
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        address(ns, "p0", "198.51.100.1/24");
        let (d0, p0) = (link(&nl, "d0").await, link(&nl, "p0").await);
        add_rules(&nl, &[fwmark_rule(Family::V4, 100, 100, (4, 0xff))]).await;
        add_routes(&nl, &[route(100, "0.0.0.0/0", Some("192.0.2.254"), d0)]).await;
        let mut q = RouteQuery::new(ip("203.0.113.9"), 4);
        (q.src, q.iif) = (Some(ip("198.51.100.7")), Some(p0));
        let a = nl.route_get(&q).await.unwrap();
        assert_eq!(
            (a.table, a.gateway, a.oif),
            (100, Some(ip("192.0.2.254")), Some(d0))
        );
        q.mark = 0;
        let e = nl.route_get(&q).await;
        assert!(
            matches!(e, Err(NetlinkError::Kernel { .. })),
            "no route in main: {e:?}"
        );
    });
}

#[test]
fn links_and_addresses() {
    in_netns("links", async |_ns, nl| {
        let d0 = link(&nl, "d0").await;
        assert_eq!(nl.link_index("lo").await.unwrap(), Some(1));
        assert_eq!(nl.link_index("nosuchlink").await.unwrap(), None);
        let names: Vec<String> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(sorted(names), vec!["d0", "d0p", "lo", "p0", "p0p"]);
        let addresses = nl.addresses(d0).await.unwrap();
        assert!(addresses.contains(&net("192.0.2.1/24")), "{addresses:?}");
        assert!(addresses.contains(&net("2001:db8::1/64")), "{addresses:?}");
        assert!(!addresses.iter().any(|a| a.addr().is_loopback()));
    });
}

#[test]
fn new_outside_a_runtime_is_an_error() {
    // Checked before any socket is opened, so this needs no namespace.
    let r = Netlink::new();
    assert!(matches!(r, Err(NetlinkError::NoRuntime)), "{r:?}");
}
