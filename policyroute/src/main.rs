//! The `policyroute` command line.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

mod import_cli;
use clap::{CommandFactory, Parser, Subcommand};
use policyroute::{
    control::{
        apply, drift, explain, flush, metrics, question::Question, run, status, trace, validate,
        ControlError, Options,
    },
    present,
};

/// Policy routing with an eBPF classifier: traffic matching a rule (protocol, source or
/// destination prefix, ports, DSCP) gets its gateway's mark at tc ingress, and fwmark ip
/// rules send it through that gateway's routing table. State lives in the kernel, per
/// network namespace; run the commands in the namespace they should act on.
#[derive(Parser)]
#[command(name = "policyroute", version)]
struct Cli {
    /// Run in this named network namespace (`ip netns add` names), as `ip -n` does.
    #[arg(short = 'n', long = "netns", global = true, value_name = "NAME")]
    netns: Option<String>,
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
    /// Check a policy file without changing anything, as any user: syntax, meaning, list
    /// files, rt_tables names and what compiling it can refuse. Devices this namespace
    /// lacks are warnings. Exit 0 when valid, 2 when not (with file:line).
    Validate {
        /// The policy file (TOML).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy file, then make the kernel match it: add what is missing, remove
    /// what policyroute owns that the file no longer has. Idempotent. Routes of others in a
    /// gateway's table and others' ip rules on a gateway's mark are in its way: apply names
    /// them, changes nothing and exits 1, unless --adopt takes them over.
    Apply {
        /// The policy file (TOML).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take over routes and ip rules that are not policyroute's but in its way (others'
        /// routes in a gateway's table, others' fwmark rules matching a gateway's mark):
        /// remove them as policyroute's own go in. Without it apply refuses, naming them.
        #[arg(long)]
        adopt: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply a policy file, then stay in the foreground and keep the kernel matching it
    /// while links, addresses, routes and rules change: a device named in the policy may
    /// appear later (its part waits for it). SIGHUP re-reads the file (a broken file is
    /// reported and the running policy stays). SIGTERM/SIGINT exit and leave the dataplane
    /// in place. Logs go to stderr. One per network namespace. Others' routes and rules in
    /// the policy's way refuse the start (exit 1) unless --adopt takes them over; those
    /// appearing later are left in place and reported (log, status, check).
    Run {
        /// The policy file (TOML).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// On SIGTERM/SIGINT, remove everything (as `flush`) instead of leaving it.
        #[arg(long)]
        flush_on_exit: bool,
        /// Log one JSON object per line instead of text.
        #[arg(long)]
        json_log: bool,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT: loopback).
        #[arg(long, value_name = "[ADDR:]PORT", value_parser = metrics::listen_address)]
        metrics: Option<std::net::SocketAddr>,
        /// At the start, take over routes and ip rules that are not policyroute's but in its
        /// way, as `apply --adopt` (without it the start refuses them). Any appearing later
        /// are left in place and reported (log, status line, `status`, `check`).
        #[arg(long)]
        adopt: bool,
    },
    /// Show hooks, gateways, rules with packet and byte counters, owned ip rules and
    /// routes, the daemon, and drift from the applied policy. Exits 0 either way.
    Status {
        /// Print JSON (keys: rules[{name, mark, packets, bytes, ...}], gateways[{name, table,
        /// mark, dev, ...}], hooks, ip_rules, routes, drift[{kind, change, object}],
        /// daemon{pid, started, last_reconcile, last_error}).
        #[arg(long)]
        json: bool,
    },
    /// Exit 1 when the kernel differs from the applied policy (drift), 0 when it matches,
    /// 3 when no policy is applied here: for monitoring scripts and health checks.
    Check {
        /// Print the drift as JSON (a list of {kind, change, object}).
        #[arg(long)]
        json: bool,
    },
    /// Show which rule a flow matches, its mark, and the route the kernel takes for it.
    /// With --iif the loaded classifier itself runs on a synthesized packet.
    Explain {
        #[command(flatten)]
        question: Question,
        /// Print JSON (keys: rule, mark, table, gateway, dev, src, ...).
        #[arg(long)]
        json: bool,
    },
    /// Watch real packets as the dataplane classifies them: one line per packet (or socket
    /// connect/send) with time, device and hook, the 5-tuple, the rule, the mark, and the
    /// sticky or group decision. Runs until Ctrl-C or --count; never changes routing.
    /// Rate-limited (--rate); dropped lines are reported when it stops.
    Trace {
        #[command(flatten)]
        filter: trace::TraceOptions,
        /// One JSON object per line (keys: time, hook, dev, proto, src, sport, dst, dport,
        /// rule, mark, gateway, group, decision, dropped, out_dev).
        #[arg(long)]
        json: bool,
    },
    /// Remove everything policyroute installed in this namespace, and nothing else.
    Flush {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Translate a classic setup into a policy file: mangle-table MARK rules (from
    /// `iptables-save`, `ip6tables-save`), the `fwmark` and `from` ip rules (`ip rule show`)
    /// and the tables' default routes (`ip route show table all`), saved as text. Gateways
    /// come from the ip rules and their tables' default routes (rt_tables names kept), rules
    /// from the PREROUTING and OUTPUT chains and the user chains they jump to (RETURN and
    /// ACCEPT as mark = 0) and from the `from` rules (src); a CONNMARK save/restore pair
    /// makes its gateways sticky. What the policy cannot express (other targets, other
    /// matches, ...) is listed at the top of the policy and on stderr with its input line.
    /// Runs no tool and changes nothing.
    ///
    /// Example: `iptables-save > rules.save; ip rule show > rules.txt; ip route show table
    /// all > routes.txt; policyroute import --iptables-save rules.save --ip-rule rules.txt
    /// --ip-route routes.txt -o policy.toml`
    Import {
        /// iptables-save or ip6tables-save output; repeat for both families. `-`: stdin.
        #[arg(long = "iptables-save", value_name = "FILE", required = true)]
        iptables_save: Vec<PathBuf>,
        /// `ip rule show` or `ip -6 rule show` output; repeat for both families. `-`: stdin.
        #[arg(long = "ip-rule", value_name = "FILE")]
        ip_rule: Vec<PathBuf>,
        /// `ip route show table all` or `ip -6 route show table all` output; repeat for both
        /// families. `-`: stdin.
        #[arg(long = "ip-route", value_name = "FILE")]
        ip_route: Vec<PathBuf>,
        /// Write the policy here instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print {policy, unexpressed: [{file, line, text}]} as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for a shell, e.g. `policyroute completions bash >
    /// /usr/share/bash-completion/completions/policyroute`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff), e.g. `policyroute man | man -l -`: section 8, the
    /// commands (policyroute(8)), or section 5, the policy file (policyroute.toml(5)).
    Man {
        /// 8: the commands; 5: the policy file.
        #[arg(long, value_name = "N", default_value = "8", value_parser = ["5", "8"])]
        section: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(code) => code,
        Err(e) => {
            // Our errors carry their cause in their own message; `{:#}` would repeat it.
            eprintln!("policyroute: {e}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The documented exit status of a failed command (see `ControlError::exit_status`; the
/// manual page's EXIT STATUS, in policyroute/src/manual/policyroute.8.md, lists them):
/// arguments the CLI itself refuses (an unknown protocol) are input too.
fn exit_status(e: &anyhow::Error) -> u8 {
    if let Some(e) = e.downcast_ref::<ControlError>() {
        return e.exit_status();
    }
    if e.downcast_ref::<BadArgument>().is_some() {
        return 2;
    }
    1
}

/// An argument the CLI refuses after clap has parsed it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadArgument(String);

fn run_cli(cli: Cli) -> anyhow::Result<ExitCode> {
    // Before the runtime starts threads: a namespace is per thread.
    if let Some(name) = &cli.netns {
        policyroute::kernel::enter_netns::enter(name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => {
                anyhow::Error::new(BadArgument(e.to_string()))
            }
            std::io::ErrorKind::PermissionDenied => anyhow::Error::new(ControlError::Privileges),
            _ => anyhow::anyhow!("entering network namespace {name}: {e}"),
        })?;
    }
    let opts = Options {
        bpffs_dir: cli.bpffs_dir,
        rt_tables: cli.rt_tables,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(dispatch(cli.command, opts))
}

async fn dispatch(command: Command, opts: Options) -> anyhow::Result<ExitCode> {
    match command {
        Command::Apply {
            config,
            dry_run,
            adopt,
            json,
        } => {
            let on_foreign = match adopt {
                true => apply::OnForeign::Adopt,
                false => apply::OnForeign::Refuse,
            };
            let report = apply::apply(&config, &opts, dry_run, on_foreign).await?;
            print(json, &report, || present::apply(&report))?;
            if report.refused && !dry_run {
                return Err(ControlError::Refused(report.foreign.len()).into());
            }
        }
        Command::Validate { config, json } => {
            let v = validate::validate(&config, &opts)?;
            print(json, &v, || present::validate(&v))?;
        }
        Command::Run {
            config,
            flush_on_exit,
            json_log,
            metrics,
            adopt,
        } => {
            init_logs(json_log);
            let options = run::RunOptions {
                config,
                flush_on_exit,
                metrics,
                adopt,
                wording: run::Wording {
                    apply: present::apply,
                    flush: present::flush,
                },
            };
            run::run(&opts, &options).await?;
        }
        Command::Status { json } => {
            let s = status::status(true).await?;
            print(json, &s, || present::status(&s))?;
        }
        Command::Check { json } => return check(json).await,
        Command::Explain { question, json } => {
            let q = question.query()?;
            let e = explain::explain(&q).await?;
            print(json, &e, || present::explain(&e))?;
        }
        Command::Trace { filter, json } => {
            return run_trace(&filter, json).await;
        }
        Command::Flush { json } => {
            let r = flush::flush(&opts).await?;
            print(json, &r, || present::flush(&r))?;
        }
        Command::Import {
            iptables_save,
            ip_rule,
            ip_route,
            output,
            json,
        } => {
            let files = import_cli::Files {
                iptables: iptables_save,
                ip_rules: ip_rule,
                ip_routes: ip_route,
            };
            import_cli::run(&files, output.as_deref(), json, &opts)?;
        }
        Command::Completions { shell } => {
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "policyroute", &mut std::io::stdout());
        }
        Command::Man { section } => {
            let page = match section.as_str() {
                "5" => policyroute::manual::policy_file(),
                _ => policyroute::manual::commands(Cli::command()),
            };
            print!("{page}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit status 0: the kernel holds the applied policy; 1: drift; 3: no policy is applied
/// (so a monitor can tell a router that lost its policy from a healthy one).
async fn check(json: bool) -> anyhow::Result<ExitCode> {
    let s = status::status(true).await?;
    let items: &[drift::DriftItem] = &s.drift;
    if !s.applied && items.is_empty() {
        print(json, &items, || format!("{}\n", present::NOTHING_APPLIED))?;
        return Ok(ExitCode::from(3));
    }
    print(json, &items, || present::drift(items))?;
    Ok(if items.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Lines on stderr with levels (journald adds the time), or one JSON object per line.
fn init_logs(json: bool) {
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if json {
        logs.json().init();
    } else {
        logs.without_time().init();
    }
}

fn print<T: serde::Serialize + ?Sized>(
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

/// Prints lines as they come (flushed: a pipe reader sees them at once).
async fn run_trace(opts: &trace::TraceOptions, json: bool) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let summary = trace::trace(opts, |line| {
        let text = if json {
            serde_json::to_string(line).unwrap_or_default()
        } else {
            present::trace_line(line)
        };
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    })
    .await?;
    if summary.dropped > 0 {
        eprintln!(
            "policyroute: {} line(s) dropped by the rate limit (--rate {})",
            summary.dropped, opts.rate
        );
    }
    Ok(ExitCode::SUCCESS)
}
