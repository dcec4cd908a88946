//! `iptables-save` and `ip6tables-save` output: the mangle table's `MARK` rules of the
//! chains that decide routes (PREROUTING for forwarded traffic, OUTPUT for the host's
//! own), and a note for everything else.
use ipnet::IpNet;

use super::{tokens::tokens, ImportError, Note, Source};
use crate::policy::matcher::Match;
use crate::policy::ports::{PortRange, PortSet};
use crate::policy::protocol;

/// Where a mark set in a chain takes effect on the route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `PREROUTING`: traffic received on a device, before its route is chosen.
    Forwarded,
    /// `OUTPUT`: the host's own traffic, re-routed after the mark is set.
    Local,
}

/// A `-j MARK` rule that policyroute can express.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkRule {
    pub line: usize,
    pub hook: Hook,
    pub matcher: Match,
    /// `-i DEV`.
    pub iif: Option<String>,
    pub mark: u32,
    /// The bits the rule sets (`--set-xmark VALUE/MASK`).
    pub mask: u32,
    /// `-m comment --comment TEXT`.
    pub comment: Option<String>,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub rules: Vec<MarkRule>,
    pub notes: Vec<Note>,
}

const NOT_ROUTING: [&str; 3] = ["INPUT", "FORWARD", "POSTROUTING"];
const MODULES: [&str; 5] = ["tcp", "udp", "multiport", "comment", "dscp"];

/// The table being read: its name, header line and rule count.
struct Table {
    name: String,
    line: usize,
    rules: usize,
    /// Chains declared by `:CHAIN` lines: a `-j` to one of them is a jump.
    chains: Vec<String>,
}

pub fn parse(src: &Source) -> Result<Parsed, ImportError> {
    let mut out = Parsed::default();
    let mut table: Option<Table> = None;
    let mut last = 0;
    for (n, raw) in src.lines() {
        last = n;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if let Some(open) = &table {
                let msg = format!("*{name} before COMMIT of *{}", open.name);
                return Err(ImportError::at(&src.label, n, msg));
            }
            table = Some(Table {
                name: name.trim().to_owned(),
                line: n,
                rules: 0,
                chains: Vec::new(),
            });
            continue;
        }
        let Some(open) = table.as_mut() else {
            let msg = "outside a table (expected *TABLE first)";
            return Err(ImportError::at(&src.label, n, msg));
        };
        if line == "COMMIT" {
            if let Some(note) = other_table(src, open) {
                out.notes.push(note);
            }
            table = None;
        } else if line.starts_with(':') {
            open.chains.push(chain_header(src, n, line)?);
        } else if let Some(rule) = appended(line) {
            open.rules += 1;
            if open.name == "mangle" {
                match mangle_rule(src, n, rule, &open.chains)? {
                    Ok(r) => out.rules.push(r),
                    Err(why) => out.notes.push(Note::new(src, n, why)),
                }
            }
        } else {
            let msg = format!("unexpected {line:?} (expected :CHAIN, -A CHAIN ..., or COMMIT)");
            return Err(ImportError::at(&src.label, n, msg));
        }
    }
    match table {
        Some(open) => Err(ImportError::at(
            &src.label,
            last,
            format!("*{} has no COMMIT (truncated?)", open.name),
        )),
        None => Ok(out),
    }
}

/// The rule text after `-A`, without the `[packets:bytes]` counters of `iptables-save -c`.
fn appended(line: &str) -> Option<&str> {
    let line = match line.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1.trim_start(),
        None => line,
    };
    line.strip_prefix("-A ")
}

/// `:CHAIN POLICY [packets:bytes]`.
fn chain_header(src: &Source, n: usize, line: &str) -> Result<String, ImportError> {
    let fields: Vec<&str> = line[1..].split_whitespace().collect();
    if fields.len() < 2 {
        let msg = format!("malformed chain header {line:?} (expected :CHAIN POLICY [p:b])");
        return Err(ImportError::at(&src.label, n, msg));
    }
    Ok(fields[0].to_owned())
}

/// Rules of other tables are no routing policy: NAT, filtering. They stay where they are.
fn other_table(src: &Source, t: &Table) -> Option<Note> {
    (t.name != "mangle" && t.rules > 0).then(|| {
        let what = format!(
            "table {}: {} rule(s) are not routing policy and are not imported; keep them \
             in iptables or nftables",
            t.name, t.rules
        );
        Note::new(src, t.line, what)
    })
}

/// A mangle rule: `Ok(Ok(rule))` when expressible, `Ok(Err(why))` when not, `Err` when
/// the line cannot be read at all.
fn mangle_rule(
    src: &Source,
    n: usize,
    text: &str,
    chains: &[String],
) -> Result<Result<MarkRule, String>, ImportError> {
    let words = tokens(text).map_err(|m| ImportError::at(&src.label, n, m))?;
    let Some((chain, args)) = words.split_first() else {
        return Err(ImportError::at(&src.label, n, "-A without a chain"));
    };
    let hook = match chain.as_str() {
        "PREROUTING" => Hook::Forwarded,
        "OUTPUT" => Hook::Local,
        c if NOT_ROUTING.contains(&c) => {
            return Ok(Err(format!(
                "chain {c}: a mark set here comes after the routing decision and chooses \
                 no route; not imported"
            )))
        }
        c => {
            return Ok(Err(format!(
                "chain {c}: rules of user-defined chains are not imported (jumps are not \
                 followed)"
            )))
        }
    };
    if let Err(why) = target_kind(args, chains) {
        return Ok(Err(why));
    }
    let mut rule = RuleReader::new(n, hook);
    match rule.read(args) {
        Ok(Ok(())) => Ok(Ok(rule.finish())),
        Ok(Err(why)) => Ok(Err(why)),
        Err(m) => Err(ImportError::at(&src.label, n, m)),
    }
}

/// Reads one rule's options; "not expressible" is `Ok(Err(why))`, unreadable `Err`.
struct RuleReader {
    rule: MarkRule,
    target: bool,
}

type Read = Result<Result<(), String>, String>;

impl RuleReader {
    fn new(line: usize, hook: Hook) -> Self {
        Self {
            rule: MarkRule {
                line,
                hook,
                matcher: Match::default(),
                iif: None,
                mark: 0,
                mask: u32::MAX,
                comment: None,
            },
            target: false,
        }
    }

    fn finish(self) -> MarkRule {
        self.rule
    }

    fn read(&mut self, args: &[String]) -> Read {
        let mut it = args.iter();
        while let Some(opt) = it.next() {
            let mut value = || {
                it.next()
                    .map(String::as_str)
                    .ok_or_else(|| format!("{opt} needs a value"))
            };
            match self.option(opt, &mut value)? {
                Ok(()) => {}
                Err(why) => return Ok(Err(why)),
            }
        }
        if !self.target {
            return Ok(Err("no target: the rule only counts packets".to_owned()));
        }
        Ok(Ok(()))
    }

    fn option<'a>(
        &mut self,
        opt: &str,
        value: &mut dyn FnMut() -> Result<&'a str, String>,
    ) -> Read {
        let m = &mut self.rule.matcher;
        match opt {
            "!" => return Ok(Err(format!("negation (! {})", value()?))),
            "-p" | "--protocol" => m.proto = Some(proto(value()?)?),
            "-s" | "--source" => m.src = Some(prefix(value()?)?),
            "-d" | "--destination" => m.dst = Some(prefix(value()?)?),
            "-i" | "--in-interface" => {
                let dev = value()?;
                if dev.ends_with('+') {
                    return Ok(Err(format!("-i {dev}: device wildcards are not supported")));
                }
                self.rule.iif = Some(dev.to_owned());
            }
            "-m" | "--match" => {
                let module = value()?;
                if !MODULES.contains(&module) {
                    return Ok(Err(format!("-m {module}: match not supported")));
                }
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                m.dport = Some(ports(value()?)?)
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                m.sport = Some(ports(value()?)?)
            }
            "--comment" => self.rule.comment = Some(value()?.to_owned()),
            "--dscp" => m.dscp = Some(dscp(value()?)?),
            "-j" | "--jump" => {
                let _ = value()?;
                self.target = true;
            }
            "--set-xmark" | "--set-mark" => {
                let (mark, mask) = xmark(value()?)?;
                if mark & !mask != 0 {
                    return Ok(Err(format!(
                        "{opt} {mark:#x}/{mask:#x} flips bits outside its mask; not supported"
                    )));
                }
                (self.rule.mark, self.rule.mask) = (mark, mask);
            }
            other => return Ok(Err(format!("{other}: option not supported"))),
        }
        Ok(Ok(()))
    }
}

/// `Err(why)` unless the rule's target is `MARK` setting a mark.
fn target_kind(args: &[String], chains: &[String]) -> Result<(), String> {
    let at = args
        .iter()
        .position(|a| matches!(a.as_str(), "-j" | "--jump" | "-g" | "--goto"));
    let Some(at) = at else {
        return Ok(());
    };
    let target = args.get(at + 1).map_or("", String::as_str);
    if args[at].starts_with("-g") || args[at] == "--goto" {
        return Err(format!("-g {target}: goto is not followed"));
    }
    let why = match target {
        "MARK" => {
            let sets = args.iter().any(|a| a == "--set-xmark" || a == "--set-mark");
            return if sets {
                Ok(())
            } else {
                Err("-j MARK with --and-mark, --or-mark or --xor-mark: not supported".into())
            };
        }
        "CONNMARK" => "-j CONNMARK: connection marks are not imported (`sticky = true` on a \
                       gateway sends replies back through the gateway a connection came in)"
            .to_owned(),
        "RETURN" | "ACCEPT" => format!(
            "-j {target}: chain logic is not imported; the packets it lets skip the later \
             MARK rules would match them in the policy (a rule with mark = 0 ahead of them \
             exempts traffic)"
        ),
        chain if chains.iter().any(|c| c == chain) => {
            format!("-j {chain}: jumps to user-defined chains are not followed")
        }
        other => format!("-j {other}: not a MARK target; not imported"),
    };
    Err(why)
}

fn proto(text: &str) -> Result<u8, String> {
    protocol::parse(text).ok_or_else(|| format!("unknown protocol {text:?}"))
}

fn prefix(text: &str) -> Result<IpNet, String> {
    if text.contains(',') {
        return Err(format!(
            "{text}: several addresses in one rule are not supported"
        ));
    }
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid address or prefix {text:?}"))?;
    Ok(net.trunc())
}

/// `80`, `1000:2000`, `:1023`, `1024:`, or a comma list of them (multiport).
fn ports(text: &str) -> Result<PortSet, String> {
    let bad = || format!("invalid port list {text:?}");
    let port = |p: &str, empty: u16| {
        if p.is_empty() {
            Ok(empty)
        } else {
            p.parse::<u16>().map_err(|_| bad())
        }
    };
    let ranges = text
        .split(',')
        .map(|item| {
            let (lo, hi) = item.split_once(':').unwrap_or((item, item));
            let (lo, hi) = (port(lo, 0)?, port(hi, u16::MAX)?);
            PortRange::new(lo, hi).ok_or_else(bad)
        })
        .collect::<Result<Vec<_>, String>>()?;
    PortSet::new(ranges).ok_or_else(bad)
}

fn number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn dscp(text: &str) -> Result<u8, String> {
    number(text)
        .filter(|&d| d <= 63)
        .map(|d| d as u8)
        .ok_or_else(|| format!("invalid DSCP {text:?} (0-63)"))
}

/// `VALUE[/MASK]`, the mask all ones when absent.
fn xmark(text: &str) -> Result<(u32, u32), String> {
    let (value, mask) = text.split_once('/').unwrap_or((text, "0xffffffff"));
    match (number(value), number(mask)) {
        (Some(v), Some(m)) => Ok((v, m)),
        _ => Err(format!("invalid mark {text:?} (expected VALUE[/MASK])")),
    }
}
