//! `ip rule show` (and `ip -6 rule show`) output: the `fwmark M lookup T` rules that send
//! marked traffic to a table, and the `from PREFIX lookup T` rules that send a source's
//! traffic there. The kernel's own three rules pass silently; any other rule is a note.
use ipnet::IpNet;

use super::{ImportError, Note, Source};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwmarkRule {
    /// `file:line`, for notes about it.
    pub origin: (String, usize),
    pub priority: u32,
    pub mark: u32,
    pub mask: u32,
    /// As printed: an rt_tables name or a number.
    pub table: String,
}

/// `from PREFIX lookup T`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromRule {
    /// `file:line`, for notes about it.
    pub origin: (String, usize),
    pub priority: u32,
    pub src: IpNet,
    /// As printed: an rt_tables name or a number.
    pub table: String,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub rules: Vec<FwmarkRule>,
    pub from: Vec<FromRule>,
    pub notes: Vec<Note>,
}

/// The rules every namespace starts with.
const KERNEL_TABLES: [&str; 3] = ["local", "main", "default"];

pub fn parse(src: &Source) -> Result<Parsed, ImportError> {
    let mut out = Parsed::default();
    for (n, line) in src.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let (priority, selector) = line
            .split_once(':')
            .and_then(|(p, rest)| Some((p.trim().parse::<u32>().ok()?, rest)))
            .ok_or_else(|| ImportError::at(&src.label, n, "expected PRIORITY: SELECTOR ACTION"))?;
        let words: Vec<&str> = selector.split_whitespace().collect();
        let origin = (src.label.clone(), n);
        match shape(&words) {
            Shape::Kernel => {}
            Shape::From { src: net, table } => out.from.push(FromRule {
                origin,
                priority,
                src: net,
                table: table.to_owned(),
            }),
            Shape::Fwmark { mark, mask, table } => {
                if priority > crate::policy::MAIN_RULE_PRIORITY {
                    let why = format!(
                        "ip rule {priority}: comes after main's rule (32766), so main's \
                         default route wins over it; the policy puts its rules before main"
                    );
                    out.notes.push(Note::new(src, n, why));
                }
                out.rules.push(FwmarkRule {
                    origin,
                    priority,
                    mark,
                    mask,
                    table: table.to_owned(),
                });
            }
            Shape::Other(why) => {
                let what = format!("ip rule {priority}: {}: {why}", words.join(" "));
                out.notes.push(Note::new(src, n, what));
            }
            Shape::Malformed(why) => return Err(ImportError::at(&src.label, n, why)),
        }
    }
    Ok(out)
}

enum Shape<'a> {
    Kernel,
    From {
        src: IpNet,
        table: &'a str,
    },
    Fwmark {
        mark: u32,
        mask: u32,
        table: &'a str,
    },
    Other(&'static str),
    Malformed(String),
}

fn shape<'a>(words: &[&'a str]) -> Shape<'a> {
    let (mut from, mut mark, mut table, mut other) = (None, None, None, false);
    let mut it = words.iter();
    while let Some(&w) = it.next() {
        let mut value = || it.next().copied();
        match w {
            "from" => match value() {
                Some("all") => {}
                // `ip rule` prints an address without its length (`from 192.0.2.10`).
                Some(text) => match super::mark_rule::prefix(text) {
                    Ok(net) => from = Some(net),
                    Err(why) => return Shape::Malformed(why),
                },
                None => return Shape::Malformed("from needs a prefix".to_owned()),
            },
            "fwmark" => match value().map(mark_value) {
                Some(Some(m)) => mark = Some(m),
                _ => return Shape::Malformed("fwmark needs VALUE[/MASK]".to_owned()),
            },
            "lookup" | "table" => match value() {
                Some(t) => table = Some(t),
                None => return Shape::Malformed(format!("{w} needs a table")),
            },
            // How the rule was made, not what it does.
            "proto" | "protocol" => {
                value();
            }
            _ => other = true,
        }
    }
    match (from, mark, table, other) {
        (None, None, Some(t), false) if KERNEL_TABLES.contains(&t) => Shape::Kernel,
        (None, Some((mark, mask)), Some(table), false) => Shape::Fwmark { mark, mask, table },
        (Some(src), None, Some(table), false) => Shape::From { src, table },
        (_, None, _, _) => {
            Shape::Other("only `fwmark M lookup T` and `from PREFIX lookup T` rules are imported")
        }
        _ => Shape::Other("only `from all fwmark M lookup T` rules are imported"),
    }
}

fn mark_value(text: &str) -> Option<(u32, u32)> {
    let (v, m) = text.split_once('/').unwrap_or((text, "0xffffffff"));
    let num = |t: &str| match t.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    };
    Some((num(v)?, num(m)?))
}
