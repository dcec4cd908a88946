//! `policyroute::health` with real packets: a router namespace runs a [`Monitor`] through
//! its uplink `wan1` to a peer namespace, and the peer stops answering (nftables drops the
//! echo requests, the listener closes) and answers again.
use std::{
    net::TcpListener,
    sync::{atomic::Ordering, mpsc},
    thread,
    time::{Duration, Instant},
};

use policyroute::health::{CheckReport, CheckSpec, Family, Method, Monitor, Transition};
use policyroute_tests::{
    background::Background,
    fixture::{address, ip, veth},
    netns::NetNs,
};

const INTERVAL: Duration = Duration::from_millis(200);
const DOWN: u32 = 3;
const UP: u32 = 2;
/// How long a change may take: the detector's bounds plus the slack the brief allows.
const DOWN_WITHIN: Duration = Duration::from_millis(200 * (DOWN as u64 + 1) + 500);
const UP_WITHIN: Duration = Duration::from_millis(200 * UP as u64 + 1000);

const PEER4: &str = "198.51.100.2";
const PEER6: &str = "2001:db8:a::2";
/// Addresses of the peer outside the link's prefixes: reachable only through a route.
const FAR4: &str = "198.18.0.53";
const FAR6: &str = "2001:db8:53::53";

/// A router namespace with `wan1` (198.51.100.1/24, 2001:db8:a::1/64) linked to `up0` of a
/// peer namespace (198.51.100.2/24, 2001:db8:a::2/64; [`FAR4`] and [`FAR6`] on its
/// loopback, answered on `up0` only when routed there: `arp_ignore = 1`).
struct Net {
    router: NetNs,
    peer: NetNs,
}

impl Net {
    fn new(tag: &str) -> Self {
        let router = NetNs::new(&format!("{tag}-rtr"));
        let peer = NetNs::new(&format!("{tag}-peer"));
        for ns in [&router, &peer] {
            // Link-local addresses usable at once too, and replies from addresses that
            // only the gateway's table routes are not dropped as spoofed.
            sysctl(ns, "net.ipv6.conf.default.accept_dad", "0");
            sysctl(ns, "net.ipv6.conf.all.accept_dad", "0");
            sysctl(ns, "net.ipv4.conf.all.rp_filter", "0");
            sysctl(ns, "net.ipv4.conf.default.rp_filter", "0");
        }
        veth(&router, "wan1", &peer, "up0");
        address(&router, "wan1", "198.51.100.1/24");
        address(&router, "wan1", "2001:db8:a::1/64");
        address(&peer, "up0", "198.51.100.2/24");
        address(&peer, "up0", "2001:db8:a::2/64");
        address(&peer, "lo", &format!("{FAR4}/32"));
        address(&peer, "lo", &format!("{FAR6}/128"));
        sysctl(&peer, "net.ipv4.conf.up0.arp_ignore", "1");
        Self { router, peer }
    }

    /// The peer drops the echo requests of both families, or accepts them again.
    fn drop_pings(&self, drop: bool) {
        if drop {
            self.peer
                .exec("nft", &["add", "table", "inet", "prt_health"]);
            self.peer.exec(
                "nft",
                &[
                    "add",
                    "chain",
                    "inet",
                    "prt_health",
                    "input",
                    "{",
                    "type",
                    "filter",
                    "hook",
                    "input",
                    "priority",
                    "0",
                    ";",
                    "}",
                ],
            );
            for rule in [
                "icmp type echo-request drop",
                "icmpv6 type echo-request drop",
            ] {
                let mut args = vec!["add", "rule", "inet", "prt_health", "input"];
                args.extend(rule.split_whitespace());
                self.peer.exec("nft", &args);
            }
        } else {
            self.peer
                .exec("nft", &["delete", "table", "inet", "prt_health"]);
        }
    }
}

fn sysctl(ns: &NetNs, key: &str, value: &str) {
    ns.exec("sysctl", &["-qw", &format!("{key}={value}")]);
}

fn spec(gateway: &str, family: Family, mark: u32, targets: &[&str], method: Method) -> CheckSpec {
    CheckSpec {
        gateway: gateway.into(),
        family,
        dev: "wan1".into(),
        mark,
        targets: targets.iter().map(|t| ip(t)).collect(),
        method,
        interval: INTERVAL,
        timeout: INTERVAL,
        count: 3,
        down: DOWN,
        up: UP,
    }
}

enum Command {
    Reports(mpsc::Sender<Vec<CheckReport>>),
    Replace(Vec<CheckSpec>),
    IsUp(String, Family, mpsc::Sender<Option<bool>>),
}

/// A [`Monitor`] running on a thread of its own inside the router namespace.
struct Running {
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    transitions: mpsc::Receiver<Transition>,
    /// Transitions received and not yet expected by [`Running::expect`].
    seen: Vec<(Instant, Transition)>,
}

impl Running {
    fn reports(&self) -> Vec<CheckReport> {
        let (tx, rx) = mpsc::channel();
        self.commands.send(Command::Reports(tx)).unwrap();
        rx.recv().unwrap()
    }

    fn report(&self, gateway: &str, family: Family) -> CheckReport {
        self.reports()
            .into_iter()
            .find(|r| r.gateway == gateway && r.family == family)
            .unwrap()
    }

    fn is_up(&self, gateway: &str, family: Family) -> Option<bool> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::IsUp(gateway.into(), family, tx))
            .unwrap();
        rx.recv().unwrap()
    }

    fn replace(&self, specs: Vec<CheckSpec>) {
        self.commands.send(Command::Replace(specs)).unwrap();
    }

    fn collect(&mut self, until: Instant) {
        while let Ok(t) = self
            .transitions
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push((Instant::now(), t));
        }
    }

    /// Waits for the next change of `gateway`/`family` and checks its direction and that
    /// it came within `within` of `since`.
    fn expect(
        &mut self,
        gateway: &str,
        family: Family,
        up: bool,
        since: Instant,
        within: Duration,
    ) -> Transition {
        let deadline = since + within;
        loop {
            let found = self
                .seen
                .iter()
                .position(|(_, t)| t.gateway == gateway && t.family == family);
            if let Some(i) = found {
                let (at, t) = self.seen.remove(i);
                assert_eq!(t.up, up, "{gateway} {family}: unexpected {t:?}");
                eprintln!(
                    "{gateway} {family} up={up} after {:?}: {}",
                    at - since,
                    t.reason
                );
                assert!(
                    at <= deadline,
                    "{gateway} {family} went {} after {:?}, not within {within:?}: {}",
                    if up { "up" } else { "down" },
                    at - since,
                    t.reason
                );
                return t;
            }
            let now = Instant::now();
            assert!(
                now < deadline + Duration::from_secs(2),
                "{gateway} {family} did not go {} within {within:?}",
                if up { "up" } else { "down" }
            );
            let next = self.transitions.recv_timeout(Duration::from_millis(50));
            if let Ok(t) = next {
                self.seen.push((Instant::now(), t));
            }
        }
    }

    /// No change at all for `period`.
    fn quiet(&mut self, period: Duration) {
        self.collect(Instant::now() + period);
        assert!(self.seen.is_empty(), "unexpected changes: {:?}", self.seen);
    }
}

/// Runs `body` with a [`Monitor`] of `specs` started inside `ns` on a thread of its own,
/// on a current-thread runtime built there (sockets belong to the namespace of the
/// thread that opens them).
fn with_monitor<T>(ns: &NetNs, specs: Vec<CheckSpec>, body: impl FnOnce(&mut Running) -> T) -> T {
    let (commands, mut received) = tokio::sync::mpsc::unbounded_channel::<Command>();
    let (forward, transitions) = mpsc::channel();
    thread::scope(|scope| {
        scope.spawn(move || {
            let _inside = ns.enter();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
                let mut monitor = Monitor::start(specs, tx);
                loop {
                    tokio::select! {
                        Some(t) = changes.recv() => {
                            let _ = forward.send(t);
                        }
                        command = received.recv() => match command {
                            Some(Command::Reports(reply)) => {
                                let _ = reply.send(monitor.reports());
                            }
                            Some(Command::IsUp(gateway, family, reply)) => {
                                let _ = reply.send(monitor.is_up(&gateway, family));
                            }
                            Some(Command::Replace(specs)) => monitor.replace(specs),
                            None => return,
                        },
                    }
                }
            });
        });
        let mut running = Running {
            commands,
            transitions,
            seen: Vec::new(),
        };
        // Dropping `running` (its command sender) stops the monitor thread, also when the
        // body panics.
        body(&mut running)
    })
}

fn assert_healthy(report: &CheckReport) {
    assert!(report.up, "{report:?}");
    assert!(report.rounds > 0, "{report:?}");
    assert_eq!(report.loss_percent, 0.0, "{report:?}");
    assert!(report.rtt_ms.is_some_and(|rtt| rtt < 100.0), "{report:?}");
    assert_eq!(report.transitions, 0, "{report:?}");
}

#[test]
fn icmp_follows_the_peer_dropping_pings() {
    let net = Net::new("hicmp");
    let specs = vec![
        spec("isp", Family::V4, 0, &[PEER4], Method::Icmp),
        spec("isp", Family::V6, 0, &[PEER6], Method::Icmp),
    ];
    with_monitor(&net.router, specs, |m| {
        m.quiet(Duration::from_secs(1));
        assert_healthy(&m.report("isp", Family::V4));
        assert_healthy(&m.report("isp", Family::V6));

        net.drop_pings(true);
        let dropped = Instant::now();
        for family in [Family::V4, Family::V6] {
            let t = m.expect("isp", family, false, dropped, DOWN_WITHIN);
            assert!(t.reason.contains("without an answer"), "{}", t.reason);
            assert!(t.reason.ends_with("(icmp)"), "{}", t.reason);
        }
        assert_eq!(m.is_up("isp", Family::V4), Some(false));
        assert_eq!(m.is_up("isp", Family::V6), Some(false));

        net.drop_pings(false);
        let restored = Instant::now();
        for family in [Family::V4, Family::V6] {
            let t = m.expect("isp", family, true, restored, UP_WITHIN);
            assert_eq!(t.reason, format!("{UP} rounds answered"));
        }
        let report = m.report("isp", Family::V4);
        assert!(report.up && report.transitions == 2, "{report:?}");
        assert_eq!(m.is_up("isp", Family::V4), Some(true));
        assert_eq!(m.is_up("other", Family::V4), None);
    });
}

/// A listener on port 8080 of the peer (both families) until the returned guard drops.
struct Listener {
    _accepting: Background,
}

impl Listener {
    fn open(peer: &NetNs) -> Self {
        let listener = {
            let _inside = peer.enter();
            TcpListener::bind("[::]:8080").unwrap()
        };
        listener.set_nonblocking(true).unwrap();
        // Accept (and close) the probes' connections so the backlog never fills.
        let accepting = Background::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Self {
            _accepting: accepting,
        }
    }
}

#[test]
fn tcp_follows_the_peer_listening() {
    let net = Net::new("htcp");
    let listener = Listener::open(&net.peer);
    let specs = vec![
        spec("isp", Family::V4, 0, &[PEER4], Method::Tcp(8080)),
        spec("isp", Family::V6, 0, &[PEER6], Method::Tcp(8080)),
    ];
    with_monitor(&net.router, specs, |m| {
        m.quiet(Duration::from_secs(1));
        assert_healthy(&m.report("isp", Family::V4));
        assert_healthy(&m.report("isp", Family::V6));

        drop(listener);
        let closed = Instant::now();
        for (family, peer) in [(Family::V4, PEER4), (Family::V6, PEER6)] {
            let t = m.expect("isp", family, false, closed, DOWN_WITHIN);
            assert_eq!(
                t.reason,
                format!("{DOWN} rounds failed (tcp:8080): {peer} refused")
            );
        }

        let _listener = Listener::open(&net.peer);
        let opened = Instant::now();
        for family in [Family::V4, Family::V6] {
            m.expect("isp", family, true, opened, UP_WITHIN);
        }
    });
}

#[test]
fn probes_carry_the_gateways_mark() {
    let net = Net::new("hmark");
    // Only marked traffic has a route to the far addresses, through the peer.
    for (v, far, peer) in [("-4", FAR4, PEER4), ("-6", FAR6, PEER6)] {
        net.router
            .ip(&format!("{v} rule add fwmark 0x42 table 42 priority 100"));
        net.router
            .ip(&format!("{v} route add {far} via {peer} dev wan1 table 42"));
    }
    let specs = vec![
        spec("via42", Family::V4, 0x42, &[FAR4], Method::Icmp),
        spec("via42", Family::V6, 0x42, &[FAR6], Method::Icmp),
        spec("via43", Family::V4, 0x43, &[FAR4], Method::Icmp),
        spec("via43", Family::V6, 0x43, &[FAR6], Method::Icmp),
    ];
    let started = Instant::now();
    with_monitor(&net.router, specs, |m| {
        for family in [Family::V4, Family::V6] {
            m.expect("via43", family, false, started, DOWN_WITHIN);
        }
        m.quiet(Duration::from_secs(1));
        assert_healthy(&m.report("via42", Family::V4));
        assert_healthy(&m.report("via42", Family::V6));
    });
}

#[test]
fn a_missing_device_is_a_miss_and_replace_keeps_equal_checks() {
    let net = Net::new("hdev");
    let mut missing = spec("gone", Family::V4, 0, &[PEER4], Method::Icmp);
    missing.dev = "nosuch0".into();
    let present = spec("isp", Family::V4, 0, &[PEER4], Method::Icmp);
    let started = Instant::now();
    with_monitor(&net.router, vec![missing.clone(), present.clone()], |m| {
        let t = m.expect("gone", Family::V4, false, started, DOWN_WITHIN);
        assert!(t.reason.contains("nosuch0"), "{}", t.reason);

        // The same spec keeps its task and its state (down, one change); a changed one
        // starts over (up).
        let mut slower = present.clone();
        slower.interval = INTERVAL * 2;
        m.replace(vec![missing.clone(), slower]);
        m.quiet(Duration::from_millis(500));
        let gone = m.report("gone", Family::V4);
        assert!(!gone.up && gone.transitions == 1, "{gone:?}");
        let isp = m.report("isp", Family::V4);
        assert!(isp.up && isp.transitions == 0, "{isp:?}");

        m.replace(vec![]);
        assert_eq!(m.is_up("gone", Family::V4), None);
        assert!(m.reports().is_empty());
    });
}
