//! The failover test scaffolding on its own, without policyroute: upstream faults (the link
//! staying up), the third uplink, thousands of flows placed at once, local connections in
//! bulk, and failover timing. Routes the tests set by hand in the router namespace stand
//! in for a policy.
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use policyroute_tests::{
    cgroup::Cgroup,
    faults::ping,
    netns::NetNs,
    probe::{self, Connect},
    spread::counts,
    topology::{Place, Topology, CHECK_TARGETS, INTERNET, LAN_HOST, LAN_HOST6},
};

/// Internet net 1 (198.18.1.1, 2001:db8:ffff:1::1), where the tests send their flows.
const NET1: [(&str, &str, bool); 2] = [
    ("198.18.1.0/24", INTERNET[1], false),
    ("2001:db8:ffff:1::/64", INTERNET[3], true),
];

/// Net 1 and the check targets through upstream `place` (the rest keeps the main default
/// route, through up1).
fn route_through(t: &Topology, place: Place) {
    for (dst, _, v6) in NET1 {
        t.router
            .ip(&format!("route replace {dst} via {}", place.via(v6)));
    }
    for target in CHECK_TARGETS {
        let v6 = target.contains(':');
        t.router
            .ip(&format!("route replace {target} via {}", place.via(v6)));
    }
}

fn lan_host(v6: bool) -> &'static str {
    if v6 {
        LAN_HOST6
    } else {
        LAN_HOST
    }
}

/// Where `n` fresh UDP flows from the LAN host to `dst` (port 443) landed: a count per place.
fn land(t: &Topology, dst: &str, n: u16) -> Vec<(Place, usize)> {
    let v6 = dst.contains(':');
    let got = t.spread_udp(lan_host(v6), dst, 443, t.fresh_sports(n));
    let mut c: Vec<(Place, usize)> = counts(&got).into_iter().collect();
    c.sort_by_key(|(p, _)| format!("{p:?}"));
    c
}

fn pings(ns: &NetNs, dst: &str, count: u16) -> usize {
    ping(
        ns,
        dst,
        count,
        Duration::from_millis(1),
        Duration::from_millis(500),
    )
    .len()
}

fn has_carrier(ns: &NetNs, dev: &str) -> bool {
    let link = ns.ip(&format!("link show {dev}"));
    link.contains("LOWER_UP") && !link.contains("NO-CARRIER")
}

#[test]
fn blackhole_silences_an_upstream_until_restored() {
    let t = Topology::new("bh");
    route_through(&t, Place::Up2);
    for (_, dst, _) in NET1 {
        assert_eq!(land(&t, dst, 50), [(Place::Up2, 50)], "{dst} before");
    }
    for target in CHECK_TARGETS {
        assert_eq!(pings(&t.router, target, 20), 20, "{target} answered by up2");
    }

    t.blackhole(Place::Up2);
    assert!(has_carrier(&t.router, "wan2"), "the link stays up");
    for (_, dst, _) in NET1 {
        assert_eq!(land(&t, dst, 50), [], "{dst} through the blackholed up2");
        // Up1 is untouched: the same flows to the address it is the route for.
        let other = if dst.contains(':') {
            INTERNET[2]
        } else {
            INTERNET[0]
        };
        assert_eq!(land(&t, other, 20), [(Place::Up1, 20)], "{other}");
    }
    for target in CHECK_TARGETS {
        assert_eq!(pings(&t.router, target, 20), 0, "{target} through up2");
    }
    let cg = Cgroup::new("bh");
    let got = probe::tcp_spread(
        &t,
        &cg,
        &t.router,
        INTERNET[1],
        443,
        5,
        Duration::from_millis(500),
    );
    assert_eq!(got.len(), 5);
    assert!(got.values().all(|c| *c == Connect::Lost), "{got:?}");

    t.restore(Place::Up2);
    for (_, dst, _) in NET1 {
        assert_eq!(land(&t, dst, 50), [(Place::Up2, 50)], "{dst} after restore");
    }
    for target in CHECK_TARGETS {
        assert_eq!(pings(&t.router, target, 20), 20, "{target} after restore");
    }
    // Restoring an upstream without a fault is harmless.
    t.restore(Place::Up1);
}

#[test]
fn lossy_drops_that_share_of_pings_and_syns() {
    let t = Topology::new("lossy");
    route_through(&t, Place::Up2);
    const N: u16 = 500;
    t.lossy(Place::Up2, 30);
    for target in CHECK_TARGETS {
        let lost = usize::from(N) - pings(&t.router, target, N);
        // 150 expected; the binomial's standard deviation is about 10.
        assert!((100..=200).contains(&lost), "{target}: {lost} of {N} lost");
    }
    // Flows other than echo requests and SYNs are not touched.
    assert_eq!(land(&t, INTERNET[1], 200), [(Place::Up2, 200)]);
    let cg = Cgroup::new("lossy");
    let conns = probe::tcp_spread(
        &t,
        &cg,
        &t.router,
        INTERNET[1],
        443,
        60,
        Duration::from_millis(800),
    );
    assert_eq!(conns.len(), 60);
    let lost = conns.values().filter(|c| **c == Connect::Lost).count();
    let via_up2 = conns
        .values()
        .filter(|c| matches!(c, Connect::Arrived(a) if a.at == Place::Up2))
        .count();
    assert_eq!(lost + via_up2, 60, "{conns:?}");
    // 18 expected, standard deviation 3.5.
    assert!((5..=35).contains(&lost), "{lost} of 60 SYNs lost");

    t.lossy_spread(Place::Up2, 30);
    for target in CHECK_TARGETS {
        let answered = ping(
            &t.router,
            target,
            N,
            Duration::from_millis(1),
            Duration::from_millis(500),
        );
        let lost: Vec<u16> = (0..N).filter(|s| !answered.contains(s)).collect();
        assert_eq!(lost.len(), 150, "{target}: exactly 30 %");
        assert!(
            lost.windows(2).all(|w| w[1] > w[0] + 1),
            "{target}: never two in a row: {lost:?}"
        );
    }
    t.restore(Place::Up2);
    for target in CHECK_TARGETS {
        assert_eq!(pings(&t.router, target, 100), 100, "{target} after restore");
    }
}

#[test]
fn reset_tcp_refuses_the_port_while_icmp_is_answered() {
    let t = Topology::new("rst");
    route_through(&t, Place::Up2);
    // A connection from the router to TCP 443 of a check target: Ok, or why not.
    let connect = |target: &str| {
        let _in = t.router.enter();
        let to = SocketAddr::new(target.parse().unwrap(), 443);
        TcpStream::connect_timeout(&to, Duration::from_secs(1)).map_err(|e| e.kind())
    };
    for target in CHECK_TARGETS {
        assert_eq!(
            connect(target).err(),
            Some(ErrorKind::ConnectionRefused),
            "{target}: nobody listens yet"
        );
    }
    let service = t.serve_tcp(Place::Up2, 443);
    for target in CHECK_TARGETS {
        for _ in 0..100 {
            let c = connect(target);
            assert!(c.is_ok(), "{target}: the service answers: {c:?}");
        }
    }
    t.reset_tcp(Place::Up2, 443);
    for target in CHECK_TARGETS {
        assert_eq!(
            connect(target).err(),
            Some(ErrorKind::ConnectionRefused),
            "{target}: reset although the service listens"
        );
        assert_eq!(
            pings(&t.router, target, 20),
            20,
            "{target} still answers ICMP"
        );
    }
    t.restore(Place::Up2);
    for target in CHECK_TARGETS {
        assert!(connect(target).is_ok(), "{target} after restore");
    }
    drop(service);
    for target in CHECK_TARGETS {
        assert_eq!(
            connect(target).err(),
            Some(ErrorKind::ConnectionRefused),
            "{target}: the service stopped"
        );
    }
}

#[test]
fn spread_places_4000_flows_in_a_few_seconds() {
    let t = Topology::new("spread");
    // Equal-cost multipath over both upstreams, hashed on the 5-tuple: half of the flows
    // each way, the same flow always the same way.
    for kv in [
        "net.ipv4.fib_multipath_hash_policy=1",
        "net.ipv6.fib_multipath_hash_policy=1",
    ] {
        t.router.exec("sysctl", &["-qw", kv]);
    }
    for (dst, _, v6) in NET1 {
        t.router.ip(&format!(
            "route replace {dst} nexthop via {} nexthop via {}",
            Place::Up1.via(v6),
            Place::Up2.via(v6)
        ));
    }
    for (_, dst, v6) in NET1 {
        let sports = t.fresh_sports(4000);
        let start = Instant::now();
        let first = t.spread_udp(lan_host(v6), dst, 443, sports.clone());
        let took = start.elapsed();
        eprintln!("{dst}: 4000 flows placed in {took:?}");
        assert!(took < Duration::from_secs(5), "{dst}: {took:?}");
        assert_eq!(first.len(), 4000, "{dst}: every flow arrived");
        let c = counts(&first);
        for place in [Place::Up1, Place::Up2] {
            let n = c.get(&place).copied().unwrap_or(0);
            assert!((1600..=2400).contains(&n), "{dst}: {c:?}");
        }
        let again = t.spread_udp(lan_host(v6), dst, 443, sports);
        assert_eq!(again, first, "{dst}: the same flows, the same ways");
    }

    // The router's own connections, hashed the same way.
    let cg = Cgroup::new("spread");
    for (_, dst, _) in NET1 {
        let got = probe::tcp_spread(&t, &cg, &t.router, dst, 443, 100, Duration::from_secs(1));
        let mut at = [0usize; 2];
        for c in got.values() {
            match c {
                Connect::Arrived(a) => {
                    assert_eq!(
                        a.peer.ip().to_string(),
                        a.at.router_address(dst.contains(':')),
                        "the router's source on that link"
                    );
                    at[usize::from(a.at == Place::Up2)] += 1;
                }
                other => panic!("{dst}: {other:?}"),
            }
        }
        assert_eq!(got.len(), 100);
        assert!(at.iter().all(|&n| n >= 20), "{dst}: {at:?}");
    }
}

#[test]
fn with_lte_adds_a_third_uplink() {
    let t = Topology::with_lte("lte");
    assert_eq!(t.upstreams(), [Place::Up1, Place::Up2, Place::Up3]);
    // Not routed through until something does: the main default stays on up1.
    assert_eq!(land(&t, INTERNET[1], 20), [(Place::Up1, 20)]);
    route_through(&t, Place::Up3);
    for (_, dst, _) in NET1 {
        assert_eq!(land(&t, dst, 50), [(Place::Up3, 50)], "{dst}");
        let tcp = t.tcp(lan_host(dst.contains(':')), 0, dst, 80);
        assert_eq!(tcp.map(|a| a.at), Some(Place::Up3), "{dst} tcp");
    }
    for target in CHECK_TARGETS {
        assert_eq!(pings(&t.router, target, 20), 20, "{target} via up3");
    }
    t.blackhole(Place::Up3);
    assert_eq!(land(&t, INTERNET[1], 20), []);
    t.restore(Place::Up3);

    // Carrier: the router's wan3 stays administratively up but loses carrier; its
    // routes stay, so flows are lost rather than rerouted.
    t.carrier(Place::Up3, false);
    assert!(!has_carrier(&t.router, "wan3"));
    assert!(t
        .router
        .ip("-4 route show")
        .contains("198.18.1.0/24 via 198.19.3.2"));
    for (_, dst, _) in NET1 {
        assert_eq!(land(&t, dst, 20), [], "{dst} without carrier");
    }
    t.carrier(Place::Up3, true);
    assert!(has_carrier(&t.router, "wan3"));
    for (_, dst, _) in NET1 {
        assert_eq!(land(&t, dst, 50), [(Place::Up3, 50)], "{dst} after carrier");
    }
}

#[test]
fn time_until_measures_when_flows_move() {
    let t = Topology::new("time");
    route_through(&t, Place::Up2);
    t.blackhole(Place::Up2);
    let quick = Duration::from_millis(100);
    let moved_at = Duration::from_millis(700);
    let took = std::thread::scope(|s| {
        s.spawn(|| {
            // The event being timed, at a known moment.
            std::thread::sleep(moved_at);
            route_through(&t, Place::Up1);
        });
        t.time_until(Duration::from_secs(3), 5, |sports| {
            let got = t.spread_udp_once(LAN_HOST, INTERNET[1], 443, sports, quick);
            got.len() == 5 && got.values().all(|p| *p == Place::Up1)
        })
    });
    let took = took.expect("flows moved to up1");
    eprintln!("moved after {moved_at:?}, seen after {took:?}");
    assert!(
        took >= moved_at.saturating_sub(Duration::from_millis(50))
            && took <= moved_at + Duration::from_millis(300),
        "{took:?}"
    );
    assert_eq!(
        t.time_until(Duration::from_millis(500), 1, |sports| {
            t.spread_udp_once(LAN_HOST, INTERNET[1], 443, sports, quick)
                .values()
                .any(|p| *p == Place::Up2)
        }),
        None,
        "a deadline passed gives None"
    );
}
