//! `policyroute trace`: watch real packets as the dataplane classifies them. It writes a
//! filter into the dataplane's trace map, reads the lines the programs log through
//! aya-log's ring buffer, and clears the filter when it stops (Ctrl-C, SIGTERM, `--count`
//! reached, or an error). It never touches routing: only the trace maps change.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::{maps::PerCpuValues, util::nr_cpus};
use aya_log::EbpfLogger;
use ipnet::IpNet;
use policyroute_common::{
    names::PROGRAMS, TraceEvent, TraceFilter, TraceRate, FAMILY_V4, FAMILY_V6, TRACE_DPORT,
    TRACE_DST, TRACE_IIF, TRACE_ON, TRACE_PROTO, TRACE_SPORT, TRACE_SRC,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, Signal, SignalKind},
};

use super::{
    require_privileges,
    trace_line::{self, TraceLine},
    ControlError,
};
use crate::{
    kernel::{
        dataplane::DataplaneError,
        maps::Maps,
        netlink::{Link, Netlink},
        observe, record_store,
    },
    plan::compile::addr_words,
};

/// What to trace, as the command line asks it (read by clap); `None` conditions match
/// everything.
#[derive(Clone, Debug, clap::Args)]
pub struct TraceOptions {
    /// Only packets arriving on (tc ingress) or leaving (tc egress) this device.
    #[arg(long, value_name = "DEV")]
    pub iif: Option<String>,
    /// tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long, value_name = "PROTO", value_parser = parse_proto)]
    pub proto: Option<u8>,
    /// Only sources in this prefix (an address is a /32 or /128).
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    pub src: Option<IpNet>,
    /// Only destinations in this prefix.
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    pub dst: Option<IpNet>,
    /// Only this source port.
    #[arg(long, value_name = "PORT")]
    pub sport: Option<u16>,
    /// Only this destination port.
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,
    /// Stop after N lines.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Most lines per second (over all CPUs); the rest are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
}

/// A prefix, or an address as its /32 or /128; host bits cleared.
fn parse_prefix(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not a prefix or an address"))
}

/// A protocol by name or number.
fn parse_proto(s: &str) -> Result<u8, String> {
    crate::policy::protocol::parse(s).ok_or_else(|| crate::policy::protocol::unknown(s))
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("no policyroute dataplane in this namespace: apply a policy first")]
    NoDataplane,
    #[error("--src and --dst must be of one address family")]
    MixedFamilies,
    #[error("another trace (pid {0}) is running in this namespace; stop it first")]
    Busy(u32),
    #[error("reading the trace lines: {0}")]
    Logs(#[from] aya_log::Error),
    #[error("waiting for trace lines: {0}")]
    Io(#[from] std::io::Error),
}

/// What a trace saw, for the summary line.
#[derive(Debug, Default)]
pub struct Summary {
    pub lines: u64,
    /// Lines the rate limit dropped.
    pub dropped: u64,
}

/// Runs the trace until `opts.count` lines, Ctrl-C or SIGTERM; each line goes to `emit`.
pub async fn trace(
    opts: &TraceOptions,
    mut emit: impl FnMut(&TraceLine),
) -> Result<Summary, ControlError> {
    require_privileges()?;
    // Before anything changes: a Ctrl-C from here on ends the trace through `watch`, which
    // clears the filter, instead of killing the process with the filter set.
    let mut stops = Stops::new()?;
    let nl = Netlink::new()?;
    let links = nl.links().await?;
    let mut installed = observe::installed(&links, &[])?;
    let program = PROGRAMS
        .iter()
        .find_map(|name| installed.take_live_program(name))
        .ok_or(TraceError::NoDataplane)?;
    let dp = installed.dataplane.take().ok_or(TraceError::NoDataplane)?;
    let record = record_store::read_record(&dp.maps)?;
    let filter = filter(opts, &links)?;
    let mut session = Session::start(dp.maps, filter)?;
    let sink = Arc::new(Mutex::new(Vec::new()));
    let collector = Collector {
        owner: std::process::id(),
        events: sink.clone(),
    };
    let logger =
        EbpfLogger::init_from_id_with_logger(program.id(), collector).map_err(TraceError::from)?;
    // SAFETY: the logger owns its ring buffer's fd for its whole life inside the AsyncFd,
    // and its as_raw_fd always returns that same fd.
    let mut logs = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| TraceError::Io(e.into()))?;
    let mut summary = Summary::default();
    let result = watch(
        &mut logs,
        &sink,
        &mut session,
        &mut stops,
        opts.count,
        |e| {
            emit(&trace_line::line(e, now(), record.as_ref(), &links));
            summary.lines += 1;
        },
    )
    .await;
    summary.dropped = session.dropped().unwrap_or(0);
    session.stop()?;
    result?;
    Ok(summary)
}

/// SIGINT and SIGTERM, listened to for the whole trace. One listener each, made once: a
/// listener made anew on each turn of the loop misses a signal that arrives between turns
/// (it is then consumed and lost, and the trace never stops).
struct Stops {
    int: Signal,
    term: Signal,
}

impl Stops {
    fn new() -> Result<Self, TraceError> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }
}

/// Reads lines as they come until `count` or a signal. Once a second the trace bit is set
/// again, in case an apply that read the control word before the trace set it wrote it back
/// without.
async fn watch(
    logs: &mut AsyncFd<EbpfLogger<Collector>>,
    sink: &Mutex<Vec<TraceEvent>>,
    session: &mut Session,
    stops: &mut Stops,
    count: Option<u64>,
    mut each: impl FnMut(&TraceEvent),
) -> Result<(), ControlError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen = 0u64;
    loop {
        tokio::select! {
            ready = logs.readable_mut() => {
                let mut guard = ready.map_err(TraceError::from)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => session.assert_bit()?,
            _ = stops.int.recv() => return Ok(()),
            _ = stops.term.recv() => return Ok(()),
        }
        let events = std::mem::take(&mut *sink.lock().expect("not poisoned"));
        for e in &events {
            each(e);
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Receives aya-log's records: each is one event's bytes in hex (see the eBPF `trace`).
/// Lines of an earlier trace still in the ring buffer carry its owner and are skipped.
struct Collector {
    owner: u32,
    events: Arc<Mutex<Vec<TraceEvent>>>,
}

impl log::Log for Collector {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        match decode(&record.args().to_string()) {
            Some(e) if e.owner == self.owner => {
                self.events.lock().expect("not poisoned").push(e);
            }
            _ => {}
        }
    }

    fn flush(&self) {}
}

/// The event of a logged hex string; `None` for anything else.
fn decode(hex: &str) -> Option<TraceEvent> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    TraceEvent::from_bytes(&bytes?)
}

/// The filter for the programs.
fn filter(opts: &TraceOptions, links: &[Link]) -> Result<TraceFilter, ControlError> {
    let mut f = TraceFilter {
        flags: TRACE_ON,
        owner: std::process::id(),
        ..Default::default()
    };
    if let Some(dev) = &opts.iif {
        f.iif = links
            .iter()
            .find(|l| &l.name == dev)
            .ok_or_else(|| ControlError::NoDevice(dev.clone()))?
            .index;
        f.flags |= TRACE_IIF;
    }
    if let Some(p) = opts.proto {
        f.proto = p;
        f.flags |= TRACE_PROTO;
    }
    if let Some(p) = opts.sport {
        f.sport = p;
        f.flags |= TRACE_SPORT;
    }
    if let Some(p) = opts.dport {
        f.dport = p;
        f.flags |= TRACE_DPORT;
    }
    let family = |n: &IpNet| match n {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    };
    if let (Some(s), Some(d)) = (&opts.src, &opts.dst) {
        if family(s) != family(d) {
            return Err(TraceError::MixedFamilies.into());
        }
    }
    if let Some(n) = &opts.src {
        (f.src_net, f.src_mask, f.family) = prefix_words(n);
        f.flags |= TRACE_SRC;
    }
    if let Some(n) = &opts.dst {
        (f.dst_net, f.dst_mask, f.family) = prefix_words(n);
        f.flags |= TRACE_DST;
    }
    let cpus = nr_cpus().map_or(1, |n| n.max(1)) as u32;
    f.per_cpu_rate = opts.rate.div_ceil(cpus).max(1);
    Ok(f)
}

fn prefix_words(n: &IpNet) -> ([u32; 4], [u32; 4], u32) {
    let family = match n {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    };
    (addr_words(&n.network()), addr_words(&n.netmask()), family)
}

/// The filter written into the dataplane; cleared on `stop` or when dropped.
struct Session {
    maps: Maps,
    on: bool,
}

impl Session {
    fn start(maps: Maps, filter: TraceFilter) -> Result<Self, ControlError> {
        let current = maps.trace.get(&0, 0).map_err(DataplaneError::from)?;
        if current.flags & TRACE_ON != 0 && current.owner != 0 && alive(current.owner) {
            return Err(TraceError::Busy(current.owner).into());
        }
        let cpus = nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let zero = PerCpuValues::try_from(vec![TraceRate::default(); cpus])
            .map_err(DataplaneError::Cpus)?;
        let mut maps = maps;
        maps.trace_rate
            .set(0, zero, 0)
            .map_err(DataplaneError::from)?;
        maps.trace.set(0, filter, 0).map_err(DataplaneError::from)?;
        maps.set_trace_bit(true)?;
        Ok(Self { maps, on: true })
    }

    fn assert_bit(&mut self) -> Result<(), ControlError> {
        Ok(self.maps.set_trace_bit(true)?)
    }

    /// Lines the rate limit dropped, over all CPUs.
    fn dropped(&self) -> Result<u64, DataplaneError> {
        let values = self.maps.trace_rate.get(&0, 0)?;
        Ok(values.iter().map(|r| r.dropped).sum())
    }

    fn stop(&mut self) -> Result<(), ControlError> {
        if self.on {
            self.on = false;
            self.maps.set_trace_bit(false)?;
            self.maps
                .trace
                .set(0, TraceFilter::default(), 0)
                .map_err(DataplaneError::from)?;
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether a process with this pid exists (in our pid namespace).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_hex_decodes_to_the_event() {
        let e = TraceEvent {
            hook: 1,
            family: 0,
            proto: 6,
            how: 3,
            ifindex: 7,
            sport: 1234,
            dport: 80,
            rule: 2,
            mark: 0x10,
            member: u32::MAX,
            owner: 42,
            oif: 3,
            src: [1, 0, 0, 0],
            dst: [2, 0, 0, 0],
        };
        let hex: String = e.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode(&hex), Some(e));
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode(&hex[2..]), None);
    }

    #[test]
    fn the_rate_is_split_over_cpus_and_never_zero() {
        #[derive(clap::Parser)]
        struct Line {
            #[command(flatten)]
            opts: TraceOptions,
        }
        let opts = <Line as clap::Parser>::parse_from(["trace", "--rate", "1"]).opts;
        let f = filter(&opts, &[]).unwrap();
        assert_eq!(f.per_cpu_rate, 1);
        assert_eq!(f.flags, TRACE_ON);
    }
}
