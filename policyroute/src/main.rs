//! The `policyroute` command line.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use policyroute::control::{apply, flush, status, Options};

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
                print(json, &report, || apply_text(&report))
            }
            Command::Status { json } => {
                let s = status::status().await?;
                print(json, &s, || s.render())
            }
            Command::Flush { json } => {
                let r = flush::flush(&opts).await?;
                print(json, &r, || {
                    format!(
                        "removed {} hook(s), {} ip rule(s), {} route(s){}\n",
                        r.detached.len(),
                        r.ip_rules.len(),
                        r.routes.len(),
                        if r.unpinned { ", pins" } else { "" }
                    )
                })
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

fn apply_text(r: &apply::Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let verb = if r.dry_run { "would" } else { "did" };
    if !r.changed() {
        let _ = writeln!(o, "no changes: the kernel already matches the policy");
    }
    if r.new_dataplane {
        let _ = writeln!(o, "{verb} load the classifier");
    }
    let e = &r.entries;
    if e.inserted + e.updated + e.removed > 0 {
        let _ = writeln!(
            o,
            "{verb} write classifier entries: +{} ~{} -{}",
            e.inserted, e.updated, e.removed
        );
    }
    for dev in &r.attach {
        let _ = writeln!(o, "{verb} attach at tcx ingress of {dev}");
    }
    for d in &r.detach {
        let _ = writeln!(o, "{verb} detach from {d}");
    }
    for x in &r.routes.add {
        let _ = writeln!(
            o,
            "{verb} add route {}",
            status::describe_route(x, &r.devices)
        );
    }
    for x in &r.ip_rules.add {
        let _ = writeln!(o, "{verb} add ip rule {}", status::describe_rule(x));
    }
    for x in &r.ip_rules.remove {
        let _ = writeln!(o, "{verb} remove ip rule {}", status::describe_rule(x));
    }
    for x in &r.routes.remove {
        let _ = writeln!(
            o,
            "{verb} remove route {}",
            status::describe_route(x, &r.devices)
        );
    }
    for w in &r.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    o
}
