//! Every report's text form, for operators; `--json` prints the same values serialized.
use std::fmt::Write as _;

use crate::{
    control::{
        apply::Report,
        drift::DriftItem,
        explain::{DecidedBy, Explanation},
        flush::FlushReport,
        status::{FamilyHealth, GatewayStatus, GroupStatus, Status},
    },
    kernel::{daemon_file::DaemonState, netlink::RTPROT_POLICYROUTE},
    plan::objects::Frames,
    policy::rt_tables,
};

pub fn apply(r: &Report) -> String {
    let mut o = String::new();
    let verb = if r.dry_run { "would" } else { "did" };
    if r.refused {
        let _ = match r.dry_run {
            true => writeln!(
                o,
                "would refuse: not policyroute's and in the policy's way (with --adopt it \
                 would take them over and make the changes below):"
            ),
            false => writeln!(
                o,
                "refused, nothing changed: not policyroute's and in the policy's way \
                 (--adopt takes them over):"
            ),
        };
        for line in r.foreign.lines(&r.devices) {
            let _ = writeln!(o, "  {line}");
        }
        if !r.dry_run {
            return o;
        }
    }
    if !r.changed() {
        let _ = writeln!(o, "no changes: the kernel already matches the policy");
    }
    if r.new_dataplane {
        let _ = writeln!(o, "{verb} load the classifier");
    }
    let e = &r.entries;
    if e.changed() {
        let _ = writeln!(
            o,
            "{verb} write classifier entries: +{} ~{} -{}",
            e.inserted, e.updated, e.removed
        );
    }
    for hook in &r.attach {
        let _ = writeln!(o, "{verb} attach to {hook}");
    }
    for d in &r.detach {
        let _ = writeln!(o, "{verb} detach from {d}");
    }
    for x in &r.routes.add {
        let _ = writeln!(o, "{verb} add route {}", x.display(&r.devices));
    }
    for x in &r.ip_rules.add {
        let _ = writeln!(o, "{verb} add ip rule {}", x);
    }
    if r.adopted {
        for line in r.foreign.lines(&r.devices) {
            let _ = writeln!(o, "{verb} take over {line}");
        }
    }
    for x in &r.ip_rules.remove {
        let _ = writeln!(o, "{verb} remove ip rule {}", x);
    }
    for x in &r.routes.remove {
        let _ = writeln!(o, "{verb} remove route {}", x.display(&r.devices));
    }
    warnings(&mut o, "", &r.warnings);
    o
}

pub fn flush(r: &FlushReport) -> String {
    format!(
        "removed {} hook(s), {} ip rule(s), {} route(s){}\n",
        r.detached.len(),
        r.ip_rules.len(),
        r.routes.len(),
        if r.unpinned { ", pins" } else { "" }
    )
}

pub fn status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "namespace {}", s.namespace);
    if let (Some(src), Some(mask)) = (&s.source, s.mark_mask) {
        let _ = writeln!(o, "policy {src} (mark mask {mask:#x})");
    }
    if !s.applied {
        let _ = writeln!(o, "{NOTHING_APPLIED}");
    }
    let tcx = if s.tcx_available {
        ""
    } else {
        ", kernel without tcx"
    };
    let _ = writeln!(o, "\nhooks (attach mode {}{tcx}):", s.attach_mode);
    if s.hooks.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for h in &s.hooks {
        let frames = match h.frames {
            Some(Frames::Ip) => ", IP frames (no Ethernet header)",
            Some(Frames::Unsupported(_)) => ", frames it cannot read (link type unsupported)",
            _ => "",
        };
        let _ = writeln!(
            o,
            "  {:<40} program {}{frames}",
            h.hook.describe(),
            h.program_id
        );
    }
    gateways(&mut o, &s.gateways);
    groups(&mut o, &s.groups);
    rules(&mut o, s);
    sets(&mut o, s);
    if let Some(f) = &s.fast_path {
        fast_path(&mut o, f);
    }
    let _ = writeln!(o, "\nip rules (protocol {RTPROT_POLICYROUTE}):");
    for r in &s.ip_rules {
        let _ = writeln!(o, "  {r}");
    }
    let _ = writeln!(o, "\nroutes (protocol {RTPROT_POLICYROUTE}):");
    for r in &s.routes {
        let _ = writeln!(o, "  {}", r.display(&s.devices));
    }
    let _ = writeln!(o, "\n{}", daemon(s.daemon.as_ref()));
    if s.applied || !s.drift.is_empty() {
        let _ = write!(o, "\n{}", drift(&s.drift));
    }
    warnings(&mut o, "\n", &s.warnings);
    o
}

fn fast_path(o: &mut String, f: &crate::control::status::FastPathStatus) {
    let _ = writeln!(o, "\n{}", f.bypass);
    let c = &f.counts;
    let _ = writeln!(
        o,
        "  forwarded {}, left to the kernel {} (this host, multicast, main routes), \
         TTL expired {}, too big {} (ICMP sent), dropped {} (too big without DF), no route {}",
        c.forwarded, c.to_kernel, c.expired, c.too_big, c.dropped_fragment, c.no_route
    );
    if f.rules_needed_by.is_empty() {
        let _ = writeln!(
            o,
            "  ip rules: none (unmatched traffic keeps the kernel's fast path)"
        );
    } else {
        let _ = writeln!(
            o,
            "  ip rules installed for: {} (every packet then takes the fib rules walk)",
            f.rules_needed_by.join("; ")
        );
    }
}

fn daemon(d: Option<&DaemonState>) -> String {
    let Some(d) = d else {
        return "daemon: none (`policyroute run` repairs drift as it happens)".into();
    };
    let last = d.last_reconcile.map_or("not yet".into(), ago);
    let mut line = format!("daemon: PID {}, last reconcile {last}", d.pid);
    if let Some(e) = &d.last_error {
        let _ = write!(line, ", failing: {e}");
    }
    line
}

fn ago(unix_seconds: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} s ago", now.saturating_sub(unix_seconds))
}

/// What `status` and `check` say where no policy is applied.
pub const NOTHING_APPLIED: &str = "no policy applied in this namespace";

/// The drift list, as `status` and `check` show it.
pub fn drift(items: &[DriftItem]) -> String {
    if items.is_empty() {
        return "drift: none (the kernel matches the applied policy)\n".into();
    }
    let mut o = String::from("drift:\n");
    for d in items {
        let what = match (d.kind, d.change) {
            ("device", "missing") => format!("waiting for {}: it does not exist", d.object),
            ("device", _) => format!("waiting for {}: down or without carrier", d.object),
            _ => format!("{} {} {}", d.change, d.kind.replace('_', " "), d.object),
        };
        let _ = writeln!(o, "  {what}");
    }
    o
}

fn gateways(o: &mut String, gateways: &[GatewayStatus]) {
    let _ = writeln!(
        o,
        "\ngateways:\n  {:<16} {:>10} {:>10} {:<12} via",
        "name", "table", "mark", "dev"
    );
    for g in gateways {
        let table = g
            .table_name
            .as_ref()
            .map_or(g.table.to_string(), |n| format!("{n}({})", g.table));
        let via: Vec<String> = g.via.iter().map(ToString::to_string).collect();
        let via = if via.is_empty() {
            "(device)".to_string()
        } else {
            via.join(", ")
        };
        let mark = format!("{:#x}", g.mark);
        let _ = writeln!(
            o,
            "  {:<16} {table:>10} {mark:>10} {:<12} {via}",
            g.name, g.dev
        );
        for (family, h) in &g.health {
            let _ = writeln!(o, "  {:<16} {family} {}", "", health(h));
        }
    }
}

/// `up`, or `down (check failed) since 12 s ago, loss 100%`, ...
fn health(h: &FamilyHealth) -> String {
    let mut line = h.state.to_string();
    if let Some(why) = h.why {
        let _ = write!(line, " ({why})");
    }
    if let Some(since) = h.since {
        let _ = write!(line, " since {}", ago(since));
    }
    if h.checked {
        match (h.loss_percent, h.rtt_ms) {
            (Some(loss), rtt) => {
                let _ = write!(line, ", probe loss {loss:.0}%");
                if let Some(rtt) = rtt {
                    let _ = write!(line, ", rtt {rtt:.1} ms");
                }
                let _ = write!(line, ", {} transition(s)", h.transitions);
            }
            (None, _) => line.push_str(", checked (no daemon runs the check)"),
        }
    } else {
        line.push_str(", carrier only");
    }
    line
}

fn groups(o: &mut String, groups: &[GroupStatus]) {
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "
groups:"
    );
    for g in groups {
        let members: Vec<String> = g
            .members
            .iter()
            .map(|m| format!("{} (tier {}, weight {})", m.gateway, m.tier, m.weight))
            .collect();
        let _ = writeln!(o, "  {:<16} {}", g.name, members.join(", "));
    }
}

fn rules(o: &mut String, s: &Status) {
    let _ = writeln!(
        o,
        "\nrules (first match wins):\n  {:>10} {:>12}  {:<20} {:<22} match",
        "pkts", "bytes", "name", "target"
    );
    for r in &s.rules {
        let _ = writeln!(
            o,
            "  {:>10} {:>12}  {:<20} {:<22} {}",
            r.packets, r.bytes, r.name, r.target, r.matches
        );
    }
}

fn sets(o: &mut String, s: &Status) {
    if s.sets.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nsets:");
    for set in &s.sets {
        let from = set.file.as_deref().unwrap_or("inline");
        let used: Vec<String> = set
            .rules
            .iter()
            .map(|r| format!("{} ({} pkts)", r.name, r.packets))
            .collect();
        let used = if used.is_empty() {
            "no rule".to_owned()
        } else {
            used.join(", ")
        };
        let _ = writeln!(
            o,
            "  @{:<16} {:>8} prefixes ({} IPv4, {} IPv6) from {from}; used by {used}",
            set.name, set.prefixes, set.ipv4, set.ipv6
        );
    }
}

fn warnings(o: &mut String, before: &str, warnings: &[String]) {
    for w in warnings {
        let _ = writeln!(o, "{before}warning: {w}");
    }
}

pub fn explain(e: &Explanation) -> String {
    let rule = match (&e.rule, &e.target_gateway, e.by) {
        (Some(r), Some(g), _) => format!("{r} (gateway {g})"),
        (Some(r), None, _) => r.clone(),
        (None, _, DecidedBy::StickyFlow) => "none: a sticky flow's gateway".into(),
        (None, _, DecidedBy::NoSocketHooks) => "none: local traffic is not classified".into(),
        (None, _, _) => "none (not marked)".into(),
    };
    let via = e.gateway.map_or(String::new(), |g| format!(" via {g}"));
    let dev = e
        .dev
        .as_deref()
        .map_or(String::new(), |d| format!(" dev {d}"));
    let src = e.src.map_or(String::new(), |s| format!(" src {s}"));
    let mut o = format!("rule:  {rule}\n");
    for s in &e.sets {
        o.push_str(&format!("set:   {s}\n"));
    }
    if let Some(why) = &e.why {
        let member = e.member.as_deref().unwrap_or("none");
        match &e.group {
            Some(g) => {
                let _ = writeln!(o, "group: {g}, member {member}: {why}");
            }
            None => {
                let _ = writeln!(o, "gateway: {why}");
            }
        }
    }
    if e.dropped {
        let _ = writeln!(o, "drop:  the classifier drops it (by {})", e.by);
        return o;
    }
    if e.forwarded_by_dataplane {
        let _ = write!(
            o,
            "mark:  {:#x} (by {})\nroute: forwarded by the dataplane{via}{dev} (table {})\n",
            e.mark,
            e.by,
            rt_tables::display(e.table)
        );
        return o;
    }
    let _ = write!(
        o,
        "mark:  {:#x} (by {})\nroute: table {}{via}{dev}{src}\n",
        e.mark,
        e.by,
        rt_tables::display(e.table)
    );
    o
}

/// `HH:MM:SS.ffffff DEV HOOK PROTO SRC -> DST rule R mark M -> GATEWAY [group G] (HOW)`;
/// the time is UTC, as the kernel's trace tools print it.
pub fn trace_line(l: &crate::control::trace_line::TraceLine) -> String {
    let secs = l.time.rem_euclid(86_400.0);
    let (h, m, s) = (
        (secs / 3600.0) as u32,
        (secs % 3600.0 / 60.0) as u32,
        secs % 60.0,
    );
    let endpoint = |a: std::net::IpAddr, port: u16| match (a, port) {
        (_, 0) => a.to_string(),
        (std::net::IpAddr::V6(_), p) => format!("[{a}]:{p}"),
        (_, p) => format!("{a}:{p}"),
    };
    let mut out = format!(
        "{h:02}:{m:02}:{s:09.6} {} {} {} {} -> {}",
        l.dev.as_deref().unwrap_or("-"),
        l.hook,
        l.proto,
        endpoint(l.src, l.sport),
        endpoint(l.dst, l.dport),
    );
    match &l.rule {
        None => out.push_str(" no rule"),
        Some(r) => out.push_str(&format!(" rule {r}")),
    }
    if let Some(g) = &l.group {
        out.push_str(&format!(" group {g}"));
    }
    if l.dropped {
        out.push_str(" DROPPED");
    } else if l.rule.is_some() || l.mark != 0 {
        out.push_str(&format!(" mark {:#x}", l.mark));
        if let Some(gw) = &l.gateway {
            out.push_str(&format!(" -> {gw}"));
        }
        if let Some(dev) = &l.out_dev {
            out.push_str(&format!(" forwarded by the dataplane out {dev}"));
        }
    }
    if l.rule.is_some() {
        out.push_str(&format!(" ({})", l.decision));
    }
    out
}

/// `validate`'s answer.
pub fn validate(v: &crate::control::validate::Validation) -> String {
    let mut o = format!(
        "{}: valid ({} gateway(s), {} group(s), {} set(s), {} rule(s), {} classifier \
         entries)\n",
        v.file, v.gateways, v.groups, v.sets, v.rules, v.entries
    );
    warnings(&mut o, "", &v.warnings);
    o
}
