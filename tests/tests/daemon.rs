//! `policyroute run` keeps the policy true while the network changes: link flaps, manual
//! damage, address changes, late devices, reloads, a SIGKILL, and drift seen by `status`
//! and `check`. Real flows prove where traffic goes; repair times are measured.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::net::UnixDatagram,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use policyroute_tests::{
    cli,
    daemon::{within, Daemon},
    fixture::{self, TempFile, GATEWAY_ISP2, RULES_WEB_DNS},
    metrics::{self, scrape},
    netns::NetNs,
    topology::{Arrival, Place, Receivers, Topology, LAN_HOST, LAN_HOST6},
};

/// A probe rule of its own, so reloads can change `web` without touching it.
const UDP_9999: &str =
    "[[rule]]\nname = \"udp-9999\"\nproto = \"udp\"\ndport = 9999\ngateway = \"isp2\"\n";

/// Web, DNS and UDP 9999 through isp2, a sticky gateway (its address gets a `from` rule).
fn policy() -> String {
    let gateway = format!("{GATEWAY_ISP2}sticky = true\n");
    fixture::policy(&gateway, &[RULES_WEB_DNS, UDP_9999], "ingress = [\"lan0\"]")
}

const REPAIR: Duration = Duration::from_secs(2);

fn place(a: Option<Arrival>) -> Place {
    a.expect("the flow arrived somewhere").at
}

/// A topology whose router keeps its IPv6 addresses when a link goes down (as routers with
/// static or SLAAC addresses have them again once the link is back; the kernel otherwise
/// drops them), and skips duplicate address detection: after a link comes up, the kernel
/// sends no neighbour solicitation until its new link-local address has passed DAD (about
/// 1 s by default), which is the kernel's delay, not the repair this file measures.
fn topology(tag: &str) -> Topology {
    let t = Topology::new(tag);
    for setting in [
        "net.ipv6.conf.all.keep_addr_on_down=1",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.wan2.accept_dad=0",
    ] {
        t.router.exec("sysctl", &["-qw", setting]);
    }
    t
}

/// The router of a fresh topology running `policyroute run` (with `args`) on [`policy`],
/// ready; the policy file, so tests can change it.
struct Running {
    t: Topology,
    file: TempFile,
    d: Daemon,
}

fn running(tag: &str, args: &[&str]) -> Running {
    let t = topology(tag);
    let file = TempFile::new(&format!("{tag}.toml"), &policy());
    let d = Daemon::start(&t.router, file.arg(), args, &[]);
    d.ready();
    Running { t, file, d }
}

/// Default routes in table 100 (IPv4 and IPv6) with policyroute's protocol.
fn gateway_routes(ns: &NetNs) -> usize {
    ["-4", "-6"]
        .iter()
        .map(|f| {
            ns.exec("ip", &[f, "route", "show", "table", "100"])
                .lines()
                .filter(|l| l.starts_with("default") && l.contains("proto 211"))
                .count()
        })
        .sum()
}

fn web_goes_via_isp2(t: &Topology) {
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 80)), Place::Up2);
    assert_eq!(
        place(t.tcp(LAN_HOST6, 0, "2001:db8:ffff::1", 443)),
        Place::Up2
    );
}

fn flap(ns: &NetNs, down_for: Duration) -> Instant {
    ns.exec("ip", &["link", "set", "wan2", "down"]);
    assert!(
        within(REPAIR, || gateway_routes(ns) == 0).is_some(),
        "the kernel removes the gateway's routes when its link goes down"
    );
    std::thread::sleep(down_for);
    ns.exec("ip", &["link", "set", "wan2", "up"]);
    Instant::now()
}

#[test]
fn link_flaps_are_repaired_within_two_seconds() {
    let Running {
        t,
        file: _file,
        d: _d,
    } = running("flap", &[]);
    web_goes_via_isp2(&t);
    let up = flap(&t.router, Duration::from_secs(1));
    assert!(within(REPAIR, || gateway_routes(&t.router) == 2).is_some());
    web_goes_via_isp2(&t);
    assert!(
        up.elapsed() <= REPAIR,
        "flows back after {:?}",
        up.elapsed()
    );
    let mut took: Vec<Duration> = (0..20)
        .map(|_| {
            let up = flap(&t.router, Duration::from_millis(200));
            within(REPAIR, || gateway_routes(&t.router) == 2).expect("repaired within 2 s");
            up.elapsed()
        })
        .collect();
    took.sort();
    eprintln!(
        "repair after link up, 20 flaps: min {:?} median {:?} max {:?}",
        took[0], took[10], took[19]
    );
    web_goes_via_isp2(&t);
}

#[test]
fn manual_damage_is_repaired() {
    let Running { t, file: _file, d } = running("damage", &[]);
    t.router
        .exec("ip", &["-4", "route", "flush", "table", "100"]);
    t.router
        .exec("ip", &["-6", "route", "flush", "table", "100"]);
    let took = within(REPAIR, || gateway_routes(&t.router) == 2);
    assert!(took.is_some(), "routes back:\n{}", d.log_text());
    let fwmark = |ns: &NetNs| {
        ns.exec("ip", &["-4", "rule", "show"])
            .contains("fwmark 0x1")
    };
    t.router.exec("ip", &["-4", "rule", "del", "pref", "10001"]);
    assert!(!fwmark(&t.router));
    assert!(within(REPAIR, || fwmark(&t.router)).is_some(), "rule back");
    web_goes_via_isp2(&t);
}

#[test]
fn sticky_from_rules_follow_an_address_change() {
    let Running { t, file: _file, d } = running("addr", &[]);
    let rules = |ns: &NetNs| ns.exec("ip", &["-4", "rule", "show"]);
    assert!(rules(&t.router).contains("from 203.0.113.1 lookup 100"));
    // A new lease: the old address goes, the new one comes.
    t.router
        .exec("ip", &["addr", "del", "203.0.113.1/24", "dev", "wan2"]);
    t.router
        .exec("ip", &["addr", "add", "203.0.113.5/24", "dev", "wan2"]);
    let moved = within(REPAIR, || {
        let r = rules(&t.router);
        r.contains("from 203.0.113.5 lookup 100") && !r.contains("from 203.0.113.1 ")
    });
    assert!(moved.is_some(), "{}\n{}", rules(&t.router), d.log_text());
    // A service on the new address, reached from the internet through uplink 2: its
    // answers must go back through uplink 2 (the main table points at uplink 1, whose
    // upstream owns the same internet address and would reset the connection).
    let listener = {
        let _in = t.router.enter();
        TcpListener::bind("203.0.113.5:7777").expect("listen on the new address")
    };
    std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let _in = t.up2.enter();
            let to: SocketAddr = "203.0.113.5:7777".parse().unwrap();
            let from = "198.18.0.1".parse().unwrap();
            let mut s = policyroute_tests::topology::connect(from, 0, to)
                .expect("connected through uplink 2");
            s.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            buf
        });
        // Accepting gives up when the client does (its connect times out).
        listener.set_nonblocking(true).unwrap();
        let mut accepted = None;
        within(Duration::from_secs(5), || {
            accepted = listener.accept().ok();
            accepted.is_some() || client.is_finished()
        });
        if let Some((mut conn, _)) = accepted {
            conn.set_nonblocking(false).unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(b"pong").unwrap();
        }
        assert_eq!(&client.join().unwrap(), b"pong");
    });
}

#[test]
fn a_device_that_appears_later_gets_its_hook() {
    let t = topology("late");
    t.router.exec("ip", &["link", "set", "lan0", "down"]);
    t.router
        .exec("ip", &["link", "set", "lan0", "name", "lanlater"]);
    let file = TempFile::new("late.toml", &policy());
    let d = Daemon::start(&t.router, file.arg(), &[], &[]);
    d.ready();
    let status = cli::ok(&t.router, &["status"]);
    assert!(status.contains("waiting for lan0"), "{status}");
    t.router
        .exec("ip", &["link", "set", "lanlater", "name", "lan0"]);
    t.router.exec("ip", &["link", "set", "lan0", "up"]);
    let hooked = within(REPAIR, || {
        cli::tc_programs(&t.router)
            .iter()
            .any(|p| p.starts_with("lan0:"))
    });
    assert!(hooked.is_some(), "{}", d.log_text());
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 80)), Place::Up2);
}

#[test]
fn sighup_applies_a_changed_rule_and_loses_no_packet() {
    let Running { t, file, d } = running("hup", &[]);
    const PROBES: usize = 300;
    let changed = policy().replace("dport = [80, 443]", "dport = [8080]");
    let arrived = t.expect_udp("198.18.0.1", 9999, PROBES, || {
        let sender = {
            let _in = t.lan.enter();
            UdpSocket::bind((LAN_HOST, 0)).expect("bind")
        };
        let sent = Arc::new(AtomicUsize::new(0));
        let counting = Arc::clone(&sent);
        std::thread::spawn(move || {
            for _ in 0..PROBES {
                sender.send_to(b"probe", "198.18.0.1:9999").expect("send");
                counting.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // The reload lands in the middle of the stream: after a fifth of it is out.
        assert!(
            within(Duration::from_secs(5), || sent.load(Ordering::Relaxed)
                >= PROBES / 5)
            .is_some(),
            "the probes start"
        );
        file.write(&changed);
        d.signal(libc::SIGHUP);
    });
    assert!(
        d.wait_log("reloaded", 1, Duration::from_secs(5)),
        "{}",
        d.log_text()
    );
    assert_eq!(
        arrived.len(),
        PROBES,
        "every probe of the unchanged rule arrived"
    );
    assert!(arrived.iter().all(|a| a.at == Place::Up2));
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 8080)), Place::Up2);
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 80)), Place::Up1);
}

#[test]
fn sighup_with_a_broken_file_keeps_the_running_policy() {
    let Running { t, file, d } = running("broken", &[]);
    std::fs::write(
        &file.path,
        policy().replace("dport = 9999", "dport = \"x\""),
    )
    .unwrap();
    d.reload(
        "the running policy stays in force",
        1,
        Duration::from_secs(5),
    );
    assert!(
        d.log_text().contains("broken.toml:"),
        "the error names file and line: {}",
        d.log_text()
    );
    web_goes_via_isp2(&t);
    let udp = t.udp(LAN_HOST, 0, "198.18.0.1", 9999);
    assert_eq!(place(udp), Place::Up2);
}

fn web_status(ns: &NetNs) -> (u64, u64) {
    let s = cli::json(ns, &["status"]);
    let program = s["hooks"][0]["program_id"].as_u64().expect("a hook");
    (program, cli::packets(ns, "web"))
}

#[test]
fn after_sigkill_the_dataplane_forwards_and_the_next_run_adopts_it() {
    let Running { t, file, mut d } = running("kill", &[]);
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 80)), Place::Up2);
    let (program, packets) = web_status(&t.router);
    assert!(packets > 0);
    d.kill9();
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 80)), Place::Up2);
    let again = Daemon::start(&t.router, file.arg(), &[], &[]);
    again.ready();
    let (program_after, packets_after) = web_status(&t.router);
    assert_eq!(program_after, program, "the same program, not reloaded");
    assert!(packets_after > packets, "counters kept counting");
}

#[test]
fn a_second_run_in_the_namespace_names_the_first() {
    let Running { t, file, d } = running("twice", &[]);
    let second = cli::run(&t.router, &["run", "-c", file.arg()]);
    assert!(!second.status.success());
    let pid = d.pid().to_string();
    assert!(
        second.stderr.contains(&format!("PID {pid}")),
        "{}",
        second.stderr
    );
}

#[test]
fn status_and_check_report_drift_that_run_repairs() {
    let t = topology("drift");
    let file = TempFile::new("drift.toml", &policy());
    cli::ok(&t.router, &["apply", "-c", file.arg()]);
    assert!(cli::run(&t.router, &["check"]).status.success());
    flap(&t.router, Duration::from_millis(100));
    let s = cli::json(&t.router, &["status"]);
    let drift = s["drift"].as_array().expect("drift list");
    assert!(
        drift
            .iter()
            .any(|d| d["kind"] == "route" && d["change"] == "missing"),
        "{drift:?}"
    );
    let check = cli::run(&t.router, &["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", check.stdout);
    assert!(check.stdout.contains("missing route"), "{}", check.stdout);
    let d = Daemon::start(&t.router, file.arg(), &[], &[]);
    d.ready();
    assert!(
        within(REPAIR, || cli::run(&t.router, &["check"]).status.success()).is_some(),
        "no drift while the daemon runs"
    );
    let s = cli::json(&t.router, &["status"]);
    assert_eq!(s["drift"].as_array().map(Vec::len), Some(0));
    assert_eq!(s["daemon"]["pid"].as_i64(), Some(i64::from(d.pid())));
}

#[test]
fn readiness_is_sent_to_the_notify_socket() {
    let t = topology("notify");
    let file = TempFile::new("notify.toml", &policy());
    let path = std::env::temp_dir().join(format!("prt-{}-notify.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let d = Daemon::start(
        &t.router,
        file.arg(),
        &[],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    let _ = std::fs::remove_file(&path);
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    assert!(message.contains("STATUS=3 rule(s) in force"), "{message}");
    drop(d);
}

#[test]
fn the_unit_file_verifies() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/policyroute.service"),
    )
    .expect("contrib/policyroute.service");
    // Installed, the binary is /usr/bin/policyroute; here it is the one under test.
    let unit = unit.replace("/usr/bin/policyroute", cli::bin().to_str().unwrap());
    let file = TempFile::new("policyroute.service", &unit);
    cli::succeeds(std::process::Command::new("systemd-analyze").args(["verify", file.arg()]));
}

/// The value of the sample `name` in Prometheus text, every line of which must parse.
fn sample(text: &str, name: &str) -> f64 {
    metrics::sample(text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn metrics_count_real_traffic() {
    let Running {
        t,
        file: _file,
        d: _d,
    } = running("metrics", &["--metrics", "9464"]);
    let web = "policyroute_rule_packets_total{rule=\"web\"}";
    let before = sample(&scrape(&t.router, 9464), web);
    assert_eq!(place(t.tcp(LAN_HOST, 0, "198.18.0.1", 80)), Place::Up2);
    let text = scrape(&t.router, 9464);
    assert!(sample(&text, web) > before, "{text}");
    assert!(sample(&text, "policyroute_reconciles_total") >= 1.0);
}
