//! The `policyroute` command line.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use policyroute::{
    control::{apply, explain, flush, status, Options},
    policy::protocol,
    present,
};

/// Policy routing with an eBPF classifier: traffic matching a rule (protocol, source or
/// destination prefix, ports, DSCP) gets its gateway's mark at tc ingress, and fwmark ip
/// rules send it through that gateway's routing table. State lives in the kernel, per
/// network namespace; run the commands in the namespace they should act on.
#[derive(Parser)]
#[command(name = "policyroute", version)]
struct Cli {
    /// bpffs directory for pins [default: /sys/fs/bpf/policyroute/net-<namespace inode>]
    #[arg(long, global = true, value_name = "DIR")]
    bpffs_dir: Option<PathBuf>,
    /// rt_tables file for table names [default: /etc/iproute2/rt_tables and friends]
    #[arg(long, global = true, value_name = "FILE")]
    rt_tables: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a policy file, then make the kernel match it: add what is missing, remove
    /// what policyroute owns that the file no longer has. Idempotent.
    Apply {
        /// The policy file (TOML).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show hooks, gateways, rules with packet and byte counters, owned ip rules and routes.
    Status {
        /// Print JSON (keys: rules[{name, mark, packets, bytes, ...}], gateways[{name, table,
        /// mark, dev, ...}], hooks, ip_rules, routes).
        #[arg(long)]
        json: bool,
    },
    /// Show which rule a flow matches, its mark, and the route the kernel takes for it.
    /// With --iif the loaded classifier itself runs on a synthesized packet.
    #[command(group(clap::ArgGroup::new("origin").required(true).args(["iif", "local"])))]
    Explain {
        /// The flow arrives on this device (forwarded, or to this host).
        #[arg(long, value_name = "DEV")]
        iif: Option<String>,
        /// The flow is sent by this host.
        #[arg(long)]
        local: bool,
        /// tcp, udp, icmp, icmpv6, sctp or a number.
        #[arg(long, value_name = "PROTO")]
        proto: String,
        /// Source address (for --local, 0.0.0.0 or :: means an unbound socket).
        #[arg(long, value_name = "ADDR")]
        src: std::net::IpAddr,
        /// Source port (for --local: only of a bound socket).
        #[arg(long, value_name = "PORT")]
        sport: Option<u16>,
        /// Destination address.
        #[arg(long, value_name = "ADDR")]
        dst: std::net::IpAddr,
        /// Destination port.
        #[arg(long, value_name = "PORT")]
        dport: Option<u16>,
        /// DSCP of the packet (0-63).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..64))]
        dscp: u8,
        /// Print JSON (keys: rule, mark, table, gateway, dev, src, ...).
        #[arg(long)]
        json: bool,
    },
    /// Remove everything policyroute installed in this namespace, and nothing else.
    Flush {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // Our errors carry their cause in their own message; `{:#}` would repeat it.
        eprintln!("policyroute: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = Options {
        bpffs_dir: cli.bpffs_dir,
        rt_tables: cli.rt_tables,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Apply {
                config,
                dry_run,
                json,
            } => {
                let report = apply::apply(&config, &opts, dry_run).await?;
                print(json, &report, || present::apply(&report))
            }
            Command::Status { json } => {
                let s = status::status().await?;
                print(json, &s, || present::status(&s))
            }
            Command::Explain {
                iif,
                local: _,
                proto,
                src,
                sport,
                dst,
                dport,
                dscp,
                json,
            } => {
                let q = explain::Query {
                    iif,
                    proto: parse_proto(&proto)?,
                    src,
                    sport,
                    dst,
                    dport,
                    dscp,
                };
                let e = explain::explain(&q).await?;
                print(json, &e, || present::explain(&e))
            }
            Command::Flush { json } => {
                let r = flush::flush(&opts).await?;
                print(json, &r, || present::flush(&r))
            }
        }
    })
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn parse_proto(s: &str) -> anyhow::Result<u8> {
    protocol::parse(s).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown protocol {s:?} (known: {}, or a number 0-255)",
            protocol::known()
        )
    })
}
