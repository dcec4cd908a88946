use clap::Parser;

/// Policy routing dataplane: an eBPF TC classifier sets skb->mark from an ordered policy;
/// fwmark ip rules send marked traffic to per-gateway routing tables.
#[derive(Parser)]
#[command(name = "policyroute", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
