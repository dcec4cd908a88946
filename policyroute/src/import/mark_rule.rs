//! One rule of the mangle table (`-A CHAIN ...`): a [`MarkRule`] the policy can hold, a
//! jump into a user-defined chain, a `CONNMARK` rule, or why it is none of them.
use ipnet::IpNet;

use super::iptables_save::{Hook, MarkRule};
use crate::policy::matcher::Match;
use crate::policy::ports::{PortRange, PortSet};
use crate::policy::protocol;

const MODULES: [&str; 7] = [
    "tcp",
    "udp",
    "multiport",
    "comment",
    "dscp",
    "conntrack",
    "state",
];

pub enum Verdict {
    /// `-j MARK`, or `-j ACCEPT` (mark 0, ending the chain).
    Rule(MarkRule),
    /// `-j RETURN` (mark 0): ends a built-in chain, but only the current user-defined one.
    Return(MarkRule),
    /// `-j CHAIN` into a user-defined chain; the rule holds the jump's conditions.
    Jump { chain: String, rule: MarkRule },
    /// `-j CONNMARK`; for [`Connmark::Set`] the rule holds its conditions and mark.
    Connmark { op: Connmark, rule: MarkRule },
    /// `-m mark ! --mark 0 -j ACCEPT|RETURN`: a packet that has a mark already (after
    /// `CONNMARK --restore-mark`, its connection's) skips the rest of the chain.
    SkipMarked,
    /// Why the policy cannot express it.
    Unexpressed(String),
}

/// What a `-j CONNMARK` rule does with the connection's mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connmark {
    /// `--restore-mark`: the packet gets the connection's mark.
    Restore,
    /// `--save-mark`: the connection gets the packet's mark.
    Save,
    /// `--set-xmark`/`--set-mark`: the connection gets this mark.
    Set,
}

/// What the target of a rule is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Mark,
    Accept,
    Return,
    Jump(String),
    Connmark(Connmark),
}

/// The options after the chain name; `Err` when the line cannot be read.
pub fn read(
    line: usize,
    hook: Hook,
    args: &[String],
    chains: &[String],
) -> Result<Verdict, String> {
    if skips_marked(args) {
        return Ok(Verdict::SkipMarked);
    }
    let kind = match target_kind(args, chains) {
        Ok(kind) => kind,
        Err(why) => return Ok(Verdict::Unexpressed(why)),
    };
    let mut reader = RuleReader::new(line, hook);
    reader.rule.ends_chain = matches!(kind, Kind::Accept | Kind::Return);
    // A save or restore copies whatever mark there is; its conditions only say when, and
    // a sticky gateway remembers every flow through it (see `connmark`).
    if let Kind::Connmark(op @ (Connmark::Restore | Connmark::Save)) = kind {
        return Ok(Verdict::Connmark {
            op,
            rule: reader.rule,
        });
    }
    if let Step::Stop(why) = reader.read(args)? {
        return Ok(Verdict::Unexpressed(why));
    }
    let rule = reader.rule;
    Ok(match kind {
        Kind::Mark | Kind::Accept => Verdict::Rule(rule),
        Kind::Return => Verdict::Return(rule),
        Kind::Jump(chain) => Verdict::Jump { chain, rule },
        Kind::Connmark(op) => Verdict::Connmark { op, rule },
    })
}

/// `-m mark ! --mark 0 -j ACCEPT|RETURN` (or `-m connmark`), nothing else.
fn skips_marked(args: &[String]) -> bool {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["-m", "mark" | "connmark", "!", "--mark", value, "-j", "ACCEPT" | "RETURN"] => {
            xmark(value).is_ok_and(|(mark, _)| mark == 0)
        }
        _ => false,
    }
}

/// After an option: go on, or stop at something the policy cannot express.
enum Step {
    Next,
    Stop(String),
}

struct RuleReader {
    rule: MarkRule,
    target: bool,
}

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
                ends_chain: false,
                new_only: false,
                via: Vec::new(),
            },
            target: false,
        }
    }

    fn read(&mut self, args: &[String]) -> Result<Step, String> {
        let mut it = args.iter();
        while let Some(opt) = it.next() {
            let mut value = || {
                it.next()
                    .map(String::as_str)
                    .ok_or_else(|| format!("{opt} needs a value"))
            };
            if let Step::Stop(why) = self.option(opt, &mut value)? {
                return Ok(Step::Stop(why));
            }
        }
        if !self.target {
            return Ok(Step::Stop(
                "no target: the rule only counts packets".to_owned(),
            ));
        }
        Ok(Step::Next)
    }

    fn option<'a>(
        &mut self,
        opt: &str,
        value: &mut dyn FnMut() -> Result<&'a str, String>,
    ) -> Result<Step, String> {
        let m = &mut self.rule.matcher;
        match opt {
            "!" => return Ok(Step::Stop(format!("negation (! {})", value()?))),
            "-p" | "--protocol" => {
                let name = value()?;
                match protocol::parse(name) {
                    Some(p) => m.proto = Some(p),
                    None => return Ok(Step::Stop(format!("-p {name}: unknown protocol"))),
                }
            }
            "-s" | "--source" | "-d" | "--destination" => {
                let text = value()?;
                if text.contains(',') {
                    let why = format!("{opt} {text}: several addresses in one rule");
                    return Ok(Step::Stop(why));
                }
                let net = Some(prefix(text)?);
                match opt {
                    "-s" | "--source" => m.src = net,
                    _ => m.dst = net,
                }
            }
            "-i" | "--in-interface" => return Ok(self.device(value()?)),
            "-m" | "--match" => {
                let module = value()?;
                if !MODULES.contains(&module) {
                    return Ok(Step::Stop(format!("-m {module}: match not supported")));
                }
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                m.dport = Some(ports(value()?)?)
            }
            "--sport" | "--source-port" | "--sports" | "--source-ports" => {
                m.sport = Some(ports(value()?)?)
            }
            "--comment" => self.rule.comment = Some(value()?.to_owned()),
            "--ctstate" | "--state" => {
                let states = value()?;
                if states != "NEW" {
                    return Ok(Step::Stop(format!("{opt} {states}: match not supported")));
                }
                self.rule.new_only = true;
            }
            "--dscp" => m.dscp = Some(dscp(value()?)?),
            "-j" | "--jump" => {
                value()?;
                self.target = true;
            }
            "--set-xmark" | "--set-mark" => return self.mark(opt, value()?),
            other => return Ok(Step::Stop(format!("{other}: option not supported"))),
        }
        Ok(Step::Next)
    }

    fn device(&mut self, dev: &str) -> Step {
        if dev.ends_with('+') {
            return Step::Stop(format!("-i {dev}: device wildcards are not supported"));
        }
        self.rule.iif = Some(dev.to_owned());
        Step::Next
    }

    fn mark(&mut self, opt: &str, text: &str) -> Result<Step, String> {
        let (mark, mask) = xmark(text)?;
        if mark & !mask != 0 {
            let why = format!("{opt} {mark:#x}/{mask:#x} flips bits outside its mask");
            return Ok(Step::Stop(why));
        }
        (self.rule.mark, self.rule.mask) = (mark, mask);
        Ok(Step::Next)
    }
}

/// What the target does (no target: a MARK rule that is refused later for having none);
/// `Err(why)` for a target the policy has no counterpart of.
fn target_kind(args: &[String], chains: &[String]) -> Result<Kind, String> {
    let at = args
        .iter()
        .position(|a| matches!(a.as_str(), "-j" | "--jump" | "-g" | "--goto"));
    let Some(at) = at else {
        return Ok(Kind::Mark);
    };
    let target = args.get(at + 1).map_or("", String::as_str);
    if args[at].starts_with("-g") || args[at] == "--goto" {
        return Err(format!("-g {target}: goto is not followed"));
    }
    let has = |option: &str| args.iter().any(|a| a == option);
    let why = match target {
        "MARK" => {
            return if has("--set-xmark") || has("--set-mark") {
                Ok(Kind::Mark)
            } else {
                Err("-j MARK with --and-mark, --or-mark or --xor-mark: not supported".into())
            };
        }
        "CONNMARK" if has("--restore-mark") => return Ok(Kind::Connmark(Connmark::Restore)),
        "CONNMARK" if has("--save-mark") => return Ok(Kind::Connmark(Connmark::Save)),
        "CONNMARK" if has("--set-xmark") || has("--set-mark") => {
            return Ok(Kind::Connmark(Connmark::Set))
        }
        "CONNMARK" => {
            "-j CONNMARK with --and-mark, --or-mark or --xor-mark: not supported".to_owned()
        }
        "ACCEPT" => return Ok(Kind::Accept),
        "RETURN" => return Ok(Kind::Return),
        chain if chains.iter().any(|c| c == chain) => return Ok(Kind::Jump(chain.to_owned())),
        other => format!("-j {other}: not a MARK target; not imported"),
    };
    Err(why)
}

/// An address or prefix, host bits cleared.
pub(super) fn prefix(text: &str) -> Result<IpNet, String> {
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
