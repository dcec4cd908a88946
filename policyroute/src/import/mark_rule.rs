//! One rule of a routing chain of the mangle table (`-A PREROUTING ...` or `-A OUTPUT
//! ...`): a [`MarkRule`] the policy can hold, or why it cannot.
use ipnet::IpNet;

use super::iptables_save::{Hook, MarkRule};
use crate::policy::matcher::Match;
use crate::policy::ports::{PortRange, PortSet};
use crate::policy::protocol;

const MODULES: [&str; 5] = ["tcp", "udp", "multiport", "comment", "dscp"];

pub enum Verdict {
    Rule(MarkRule),
    /// Why the policy cannot express it.
    Unexpressed(String),
}

/// The options after the chain name; `Err` when the line cannot be read.
pub fn read(
    line: usize,
    hook: Hook,
    args: &[String],
    chains: &[String],
) -> Result<Verdict, String> {
    let ends_chain = match target_kind(args, chains) {
        Ok(ends_chain) => ends_chain,
        Err(why) => return Ok(Verdict::Unexpressed(why)),
    };
    let mut reader = RuleReader::new(line, hook);
    reader.rule.ends_chain = ends_chain;
    Ok(match reader.read(args)? {
        Step::Next => Verdict::Rule(reader.rule),
        Step::Stop(why) => Verdict::Unexpressed(why),
    })
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

/// Whether the target ends the chain (`RETURN`, `ACCEPT`: a rule of mark 0 in the
/// policy, which exempts what it matches from the later rules), `false` for `MARK`
/// setting a mark; `Err(why)` for any other.
fn target_kind(args: &[String], chains: &[String]) -> Result<bool, String> {
    let at = args
        .iter()
        .position(|a| matches!(a.as_str(), "-j" | "--jump" | "-g" | "--goto"));
    let Some(at) = at else {
        return Ok(false);
    };
    let target = args.get(at + 1).map_or("", String::as_str);
    if args[at].starts_with("-g") || args[at] == "--goto" {
        return Err(format!("-g {target}: goto is not followed"));
    }
    let why = match target {
        "MARK" => {
            let sets = args.iter().any(|a| a == "--set-xmark" || a == "--set-mark");
            return if sets {
                Ok(false)
            } else {
                Err("-j MARK with --and-mark, --or-mark or --xor-mark: not supported".into())
            };
        }
        "CONNMARK" => "-j CONNMARK: connection marks are not imported (`sticky = true` on a \
                       gateway sends replies back through the gateway a connection came in)"
            .to_owned(),
        "RETURN" | "ACCEPT" => return Ok(true),
        chain if chains.iter().any(|c| c == chain) => {
            format!("-j {chain}: jumps to user-defined chains are not followed")
        }
        other => format!("-j {other}: not a MARK target; not imported"),
    };
    Err(why)
}

fn prefix(text: &str) -> Result<IpNet, String> {
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
