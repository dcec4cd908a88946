//! Devices without an Ethernet header (tun, WireGuard, PPP): a VPN uplink on a tun link
//! (`vpn`). Real flows show, for IPv4 and IPv6, with the fast path off and on:
//! - LAN traffic a rule sends to a device-route gateway on the tunnel reaches the VPN;
//! - the VPN clients' traffic is classified at the tunnel's ingress (it reaches up2);
//! - a LAN service reached over the VPN answers over the VPN (sticky), though the router
//!   has no route to the VPN's clients.
//!
//! Before the dataplane knew link types, it read every frame as Ethernet: nothing on the
//! tunnel was classified or recorded, with no warning.
use std::net::{IpAddr, SocketAddr, TcpListener};

use policyroute_tests::{
    cli,
    topology::{connect, Place, Receivers, LAN_HOST, LAN_HOST6},
    tracer::Tracer,
    vpn::{VpnTopology, VPN_CLIENT, VPN_CLIENT6, VPN_NOT_OWNED, VPN_OWNED},
};

/// The tunnel as a sticky device-route gateway, up2 as a second provider, and a rule for
/// each: LAN web traffic (tcp/8443) through the VPN, the VPN clients' udp/9443 through up2.
fn policy(fast_path: bool) -> String {
    format!(
        "fast_path = {fast_path}\n\n\
         [[gateway]]\nname = \"vpn\"\ndev = \"tun0\"\ntable = 100\nsticky = true\n\n\
         [[gateway]]\nname = \"isp2\"\ndev = \"wan2\"\nvia = [\"203.0.113.2\", \"2001:db8:b::2\"]\n\
         table = 101\n\n\
         [[rule]]\nname = \"web-over-vpn\"\nproto = \"tcp\"\ndport = 8443\ngateway = \"vpn\"\n\n\
         [[rule]]\nname = \"vpn-clients\"\nsrc = \"198.19.65.0/24\"\n\
         proto = \"udp\"\ndport = 9443\ngateway = \"isp2\"\n\n\
         [[rule]]\nname = \"vpn-clients6\"\nsrc = \"2001:db8:65::/64\"\n\
         proto = \"udp\"\ndport = 9443\ngateway = \"isp2\"\n\n\
         [attach]\ningress = [\"lan0\", \"tun0\"]\n"
    )
}

fn every_path_through_the_tunnel(tag: &str, fast_path: bool) {
    let v = VpnTopology::new(tag);
    let out = cli::apply(&v.t.router, &policy(fast_path));
    if fast_path {
        assert!(
            out.contains("ingress on IP devices (tun0"),
            "apply says the fast path leaves what arrives on tun0 to the fwmark rules: {out}"
        );
    }
    let status = cli::json(&v.t.router, &["status"]);
    let tun_hooks = cli::items(&status, "hooks", |h| h["dev"] == "tun0");
    assert!(
        !tun_hooks.is_empty() && tun_hooks.iter().all(|h| h["frames"] == "ip"),
        "status names tun0's frames: {status}"
    );

    for (src, dst) in [(LAN_HOST, VPN_OWNED[0]), (LAN_HOST6, VPN_OWNED[1])] {
        let lan = (&v.t.lan, src, 0);
        let a = v.tcp_from(lan, dst, 8443).expect("tcp/8443 arrives");
        assert_eq!(
            a.at,
            Place::Vpn,
            "LAN tcp/8443 to {dst} goes through the tunnel"
        );
        assert_eq!(a.peer.ip().to_string(), src, "unchanged source");
        let a = v.tcp_from(lan, dst, 8080).expect("tcp/8080 arrives");
        assert_eq!(
            a.at,
            Place::Up1,
            "LAN tcp/8080 to {dst} keeps the main table"
        );
    }
    if fast_path {
        let status = cli::json(&v.t.router, &["status"]);
        assert!(
            status["fast_path"]["forwarded"].as_u64() > Some(0),
            "the fast path itself sends LAN traffic into the tunnel: {}",
            status["fast_path"]
        );
    }

    for (client, dst, rule) in [
        (VPN_CLIENT, VPN_NOT_OWNED[0], "vpn-clients"),
        (VPN_CLIENT6, VPN_NOT_OWNED[1], "vpn-clients6"),
    ] {
        let from_vpn = (&v.vpn, client, 0);
        let a = v.udp_from(from_vpn, dst, 9443).expect("udp/9443 arrives");
        assert_eq!(
            a.at,
            Place::Up2,
            "{client}'s udp/9443, classified on tun0, goes to up2"
        );
        let a = v.udp_from(from_vpn, dst, 9444).expect("udp/9444 arrives");
        assert_eq!(a.at, Place::Up1, "{client}'s udp/9444 keeps the main table");
        if !fast_path {
            traced_on_the_tunnel(&v, client, dst, rule);
        }
        let explained = cli::json(
            &v.t.router,
            &[
                "explain", "--iif", "tun0", "--proto", "udp", "--src", client, "--dst", dst,
                "--dport", "9443",
            ],
        );
        assert_eq!(
            explained["rule"], rule,
            "explain on tun0 runs the classifier on the flow: {explained}"
        );
    }

    for (client, server) in [(VPN_CLIENT, LAN_HOST), (VPN_CLIENT6, LAN_HOST6)] {
        assert!(
            answered_over_the_tunnel(&v, client, server),
            "{client} reaches the LAN service at {server} over the VPN, and its answers \
             go back through the tunnel (sticky)"
        );
    }
}

/// `policyroute trace` shows the client's packets at the tunnel's ingress, with the
/// addresses and rule the classifier read from them.
fn traced_on_the_tunnel(v: &VpnTopology, client: &str, dst: &str, rule: &str) {
    let tracer = Tracer::start(&v.t.router, &["--json", "--iif", "tun0", "--dport", "9443"]);
    let lines = tracer.lines_while(1, || {
        let _ = v.udp_from((&v.vpn, client, 0), dst, 9443);
    });
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(
        (&line["dev"], &line["src"], &line["dst"], &line["rule"]),
        (&"tun0".into(), &client.into(), &dst.into(), &rule.into()),
        "{line}"
    );
    let (ok, err) = tracer.interrupt();
    assert!(ok, "{err}");
}

/// A TCP connection from the VPN's `client` to a listener on the LAN host's `server`
/// completes: the LAN host's SYN-ACK found its way back into the tunnel.
fn answered_over_the_tunnel(v: &VpnTopology, client: &str, server: &str) -> bool {
    let server: IpAddr = server.parse().unwrap();
    let listener = {
        let _in = v.t.lan.enter();
        TcpListener::bind(SocketAddr::new(server, 2222)).expect("listen on the LAN host")
    };
    let _in = v.vpn.enter();
    let connected = connect(client.parse().unwrap(), 0, SocketAddr::new(server, 2222));
    drop(listener);
    connected.is_some()
}

#[test]
fn a_vpn_tunnel_without_the_fast_path() {
    every_path_through_the_tunnel("tun", false);
}

#[test]
fn a_vpn_tunnel_with_the_fast_path() {
    every_path_through_the_tunnel("tunfast", true);
}
