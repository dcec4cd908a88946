//! Sticky gateways: connections that arrive through uplink 2 are answered through uplink 2
//! although the main default route points at uplink 1. Each case runs first without
//! `sticky` (the answer is lost: it leaves through uplink 1, whose host drops it) and then
//! with it, so the test proves the feature, not the topology.
use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
};

use policyroute_tests::{
    cgroup::Cgroup,
    cli,
    fixture::{self, ip, GATEWAY_ISP2},
    probe,
    topology::{connect, Topology, PROBE_TIMEOUT},
};

/// A client on the internet behind uplink 2.
const CLIENT: &str = "198.18.0.1";
const ROUTER_WAN2: &str = "203.0.113.1";
const LAN_SERVER: &str = "192.0.2.10";

/// With `local`, the router's own sockets are hooked too (and `from <wan2 address>` rules
/// exist for them, which alone answer TCP services correctly): the control runs without.
fn policy(sticky: bool, local: bool, cg: &Cgroup) -> String {
    let local = if local {
        cg.attach_local()
    } else {
        "local = false\n".to_string()
    };
    let gateway = format!("{GATEWAY_ISP2}sticky = {sticky}\n");
    fixture::policy(&gateway, &[], &format!("ingress = [\"lan0\"]\n{local}"))
}

/// Connects from the client in up2 to `server`, exchanges 4 bytes each way.
fn tcp_round_trip(t: &Topology, sport: u16, server: SocketAddr) -> bool {
    let listener = {
        let ns = if server.ip() == ip(LAN_SERVER) {
            &t.lan
        } else {
            &t.router
        };
        let _in = ns.enter();
        TcpListener::bind(server).expect("bind server")
    };
    let stream = {
        let _in = t.up2.enter();
        connect(ip(CLIENT), sport, server)
    };
    let Some(mut stream) = stream else {
        return false;
    };
    let (mut conn, _) = listener.accept().expect("accept");
    conn.write_all(b"pong").unwrap();
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).is_ok()
}

/// Sends one datagram from the client in up2 to `server` (already listening) and waits for
/// the echo.
fn udp_round_trip(t: &Topology, sport: u16, server: SocketAddr) -> bool {
    let sock = {
        let _in = t.up2.enter();
        UdpSocket::bind((ip(CLIENT), sport)).expect("bind client")
    };
    sock.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    sock.send_to(b"hello", server).unwrap();
    let mut buf = [0u8; 64];
    matches!(sock.recv_from(&mut buf), Ok((_, from)) if from == server)
}

/// An echo server on the router, in the policy's cgroup, bound to the wildcard address.
fn router_udp_echo(cg: &Cgroup, t: &Topology, port: &str) -> std::process::Child {
    let mut child = probe::spawn(cg, &t.router, &["udp-echo", "0.0.0.0", port]);
    let mut ready = String::new();
    let stdout = child.stdout.as_mut().expect("piped");
    std::io::BufReader::new(stdout)
        .read_line(&mut ready)
        .expect("probe output");
    assert_eq!(ready.trim(), "ready");
    child
}

#[test]
fn replies_leave_through_the_gateway_the_connection_came_in() {
    let t = Topology::new("sticky");
    let cg = Cgroup::new("sticky");
    let r = &t.router;
    let service: SocketAddr = (ip(ROUTER_WAN2), 8080).into();
    let lan_service: SocketAddr = (ip(LAN_SERVER), 8080).into();

    cli::apply(r, &policy(false, false, &cg));
    assert!(
        !tcp_round_trip(&t, 41000, service),
        "control: without sticky the answer is lost"
    );
    assert!(
        !tcp_round_trip(&t, 41001, lan_service),
        "control: forwarded, without sticky"
    );

    cli::apply(r, &policy(true, true, &cg));
    // The host's own TCP service (answered from wan2's address, routed by a `from` rule).
    assert!(
        tcp_round_trip(&t, 41002, service),
        "router service over TCP"
    );
    // The host's UDP service bound to the wildcard address (the sendmsg hook finds the flow).
    let echo = router_udp_echo(&cg, &t, "8081");
    assert!(
        udp_round_trip(&t, 41003, (ip(ROUTER_WAN2), 8081).into()),
        "router service over UDP"
    );
    assert!(echo.wait_with_output().unwrap().status.success());
    // A LAN server reached through uplink 2 (the LAN ingress restores the flow's gateway).
    assert!(
        tcp_round_trip(&t, 41004, lan_service),
        "LAN server over TCP"
    );
    assert!(lan_udp_exchange(&t, 41005, 8082), "LAN server over UDP");
    cli::ok(r, &["flush"]);
}

/// A LAN server answers a datagram that came in through uplink 2 (the flow is recorded).
fn lan_udp_exchange(t: &Topology, client_port: u16, server_port: u16) -> bool {
    let lan_udp: SocketAddr = (ip(LAN_SERVER), server_port).into();
    let server = {
        let _in = t.lan.enter();
        UdpSocket::bind(lan_udp).unwrap()
    };
    let echo = std::thread::spawn(move || {
        server.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, peer)) = server.recv_from(&mut buf) {
            server.send_to(&buf[..n], peer).unwrap();
        }
    });
    let answered = udp_round_trip(t, client_port, lan_udp);
    echo.join().unwrap();
    answered
}

/// How explain classifies the LAN server's reply to the client.
fn reply_decided_by(t: &Topology, client_port: u16, server_port: u16) -> serde_json::Value {
    let (sport, dport) = (server_port.to_string(), client_port.to_string());
    let e = cli::json(
        &t.router,
        &[
            "explain", "--iif", "lan0", "--proto", "udp", "--src", LAN_SERVER, "--sport", &sport,
            "--dst", CLIENT, "--dport", &dport,
        ],
    );
    e["by"].clone()
}

#[test]
fn a_gateway_that_goes_down_forgets_its_sticky_flows() {
    let t = Topology::new("stickydown");
    let cg = Cgroup::new("stickydown");
    cli::apply(&t.router, &policy(true, false, &cg));
    assert!(lan_udp_exchange(&t, 41100, 8090), "LAN server over UDP");
    assert_eq!(reply_decided_by(&t, 41100, 8090), "sticky flow");
    // Uplink 2 loses carrier: its flows' replies must not keep going to it.
    t.up2.ip("link set eth0 down");
    cli::apply(&t.router, &policy(true, false, &cg));
    assert_eq!(reply_decided_by(&t, 41100, 8090), "dataplane");
    cli::ok(&t.router, &["flush"]);
}

#[test]
fn with_the_fast_path_sticky_replies_are_forwarded_by_the_dataplane() {
    let t = Topology::new("stickyfast");
    let cg = Cgroup::new("stickyfast");
    let lan_service: SocketAddr = (ip(LAN_SERVER), 8080).into();
    cli::apply(
        &t.router,
        &format!("fast_path = true\n{}", policy(true, false, &cg)),
    );
    assert!(
        tcp_round_trip(&t, 41200, lan_service),
        "LAN server over TCP"
    );
    assert!(lan_udp_exchange(&t, 41201, 8095), "LAN server over UDP");
    let status = cli::json(&t.router, &["status"]);
    assert!(
        status["fast_path"]["forwarded"].as_u64().unwrap() >= 2,
        "the replies went through the fast path: {}",
        status["fast_path"]
    );
    cli::ok(&t.router, &["flush"]);
}
