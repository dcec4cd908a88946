//! `cargo xtask demo`: a throwaway LAN / router / two-uplink topology in network
//! namespaces, `examples/demo.toml` applied on the router with the real CLI, TCP and UDP
//! flows sent from the LAN, and for each flow the uplink that received it. Everything is
//! removed at the end (namespaces are deleted on drop, also on failure).
use policyroute_tests::{
    cli,
    topology::{Arrival, Place, Topology, LAN_HOST, LAN_HOST6, LAN_HOST_ALT},
};

struct Flow {
    proto: &'static str,
    src: &'static str,
    sport: u16,
    dst: &'static str,
    dport: u16,
    expect: Place,
}

const FLOWS: &[Flow] = &[
    Flow {
        proto: "tcp",
        src: LAN_HOST,
        sport: 41000,
        dst: "198.18.0.1",
        dport: 80,
        expect: Place::Up2,
    },
    Flow {
        proto: "tcp",
        src: LAN_HOST,
        sport: 41001,
        dst: "198.18.0.1",
        dport: 443,
        expect: Place::Up2,
    },
    Flow {
        proto: "tcp",
        src: LAN_HOST,
        sport: 41002,
        dst: "198.18.0.1",
        dport: 22,
        expect: Place::Up1,
    },
    Flow {
        proto: "tcp",
        src: LAN_HOST6,
        sport: 41003,
        dst: "2001:db8:ffff::1",
        dport: 443,
        expect: Place::Up2,
    },
    Flow {
        proto: "tcp",
        src: LAN_HOST6,
        sport: 41004,
        dst: "2001:db8:ffff::1",
        dport: 25,
        expect: Place::Up1,
    },
    Flow {
        proto: "udp",
        src: LAN_HOST,
        sport: 41005,
        dst: "198.18.0.1",
        dport: 5060,
        expect: Place::Up2,
    },
    Flow {
        proto: "udp",
        src: LAN_HOST,
        sport: 41006,
        dst: "198.18.0.1",
        dport: 53,
        expect: Place::Up1,
    },
    Flow {
        proto: "udp",
        src: LAN_HOST6,
        sport: 41007,
        dst: "2001:db8:ffff::1",
        dport: 5061,
        expect: Place::Up2,
    },
    Flow {
        proto: "udp",
        src: LAN_HOST_ALT,
        sport: 41008,
        dst: "198.18.0.1",
        dport: 53,
        expect: Place::Up2,
    },
];

fn name(p: Place) -> &'static str {
    match p {
        Place::Up1 => "uplink 1 (main default)",
        Place::Up2 => "uplink 2 (isp2)",
        Place::Up3 => "uplink 3",
        Place::Lan2 => "lan2",
        Place::Vpn => "vpn",
    }
}

fn main() -> anyhow::Result<()> {
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml");
    let policy = policy.canonicalize()?;
    let policy = policy.to_str().expect("utf-8 path");
    println!(
        "== building the topology (namespaces prt-{}-*)",
        std::process::id()
    );
    let t = Topology::new("demo");
    println!(
        "== ip netns exec {} policyroute apply -c examples/demo.toml",
        t.router.name
    );
    print!("{}", cli::ok(&t.router, &["apply", "-c", policy]));
    println!("\n== flows from the LAN");
    println!(
        "{:<5} {:<30} {:<28} {:<26} source seen",
        "proto", "from", "to", "received by"
    );
    let mut wrong = 0;
    for f in FLOWS {
        let got: Option<Arrival> = match f.proto {
            "tcp" => t.tcp(f.src, f.sport, f.dst, f.dport),
            _ => t.udp(f.src, f.sport, f.dst, f.dport),
        };
        let (at, seen) = match got {
            Some(a) => (name(a.at), a.peer.ip().to_string()),
            None => ("(lost)", String::new()),
        };
        let ok = got.map(|a| a.at) == Some(f.expect);
        wrong += usize::from(!ok);
        println!(
            "{:<5} {:<30} {:<28} {:<26} {}{}",
            f.proto,
            format!("{}:{}", f.src, f.sport),
            format!("{}:{}", f.dst, f.dport),
            at,
            seen,
            if ok { "" } else { "   <-- expected elsewhere" }
        );
    }
    println!("\n== ip netns exec {} policyroute status", t.router.name);
    print!("{}", cli::ok(&t.router, &["status"]));
    println!("\n== ip netns exec {} policyroute flush", t.router.name);
    print!("{}", cli::ok(&t.router, &["flush"]));
    println!("== removing the namespaces");
    anyhow::ensure!(wrong == 0, "{wrong} flow(s) took an unexpected path");
    Ok(())
}
