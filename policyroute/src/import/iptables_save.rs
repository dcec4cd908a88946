//! `iptables-save` and `ip6tables-save` output: the mangle table's `MARK` rules of the
//! chains that decide routes (PREROUTING for forwarded traffic, OUTPUT for the host's
//! own) and of the user-defined chains they jump to ([`super::chains`]), its `CONNMARK`
//! rules, and a note for everything else.
use super::chains::{self, ConnmarkOp};
use super::{tokens::tokens, ImportError, Note, Source};
use crate::policy::matcher::Match;

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
    /// `-j RETURN` or `-j ACCEPT` (mark 0): matching packets skip the chain's later rules.
    pub ends_chain: bool,
    /// `-m conntrack --ctstate NEW` (or `-m state --state NEW`): the first packet of a
    /// connection only, which a CONNMARK save and restore extend to the connection.
    pub new_only: bool,
    /// The jumps that led to the rule, outermost first (empty: written in PREROUTING or
    /// OUTPUT itself).
    pub via: Vec<Via>,
}

/// A `-j CHAIN` into a user-defined chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub line: usize,
    pub chain: String,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub rules: Vec<MarkRule>,
    pub connmark: Vec<ConnmarkOp>,
    pub notes: Vec<Note>,
}

/// The table being read: its name, header line and rules.
struct Table {
    name: String,
    line: usize,
    rules: usize,
    /// The mangle table's `-A` lines: line number and words (the chain first).
    mangle: Vec<(usize, Vec<String>)>,
    /// Chains declared by `:CHAIN` lines: a `-j` to one of them is a jump.
    chains: Vec<String>,
}

pub fn parse(src: &Source) -> Result<Parsed, ImportError> {
    let mut out = Parsed::default();
    let mut table: Option<Table> = None;
    let read = tables(src, &mut out, &mut table);
    // The mangle table's rules are read at its COMMIT: one that cannot be read in a table
    // left open comes before the error that stopped the reading.
    if let (Err(_), Some(open)) = (&read, &table) {
        if open.name == "mangle" {
            chains::walk(src, &open.mangle, &open.chains)?;
        }
    }
    read.map(|()| out)
}

/// Reads the tables into `out`; `table` is the one open when it stops.
fn tables(src: &Source, out: &mut Parsed, table: &mut Option<Table>) -> Result<(), ImportError> {
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
            *table = Some(Table {
                name: name.trim().to_owned(),
                line: n,
                rules: 0,
                mangle: Vec::new(),
                chains: Vec::new(),
            });
            continue;
        }
        let Some(open) = table.as_mut() else {
            let msg = if line.starts_with("Chain ") {
                "this looks like `iptables -L` output; import reads `iptables-save` output"
            } else {
                "outside a table (expected *TABLE first)"
            };
            return Err(ImportError::at(&src.label, n, msg));
        };
        if line == "COMMIT" {
            if let Some(note) = other_table(src, open) {
                out.notes.push(note);
            }
            if open.name == "mangle" {
                let walked = chains::walk(src, &open.mangle, &open.chains)?;
                out.rules.extend(walked.rules);
                out.connmark.extend(walked.connmark);
                out.notes.extend(walked.notes);
            }
            *table = None;
        } else if line.starts_with(':') {
            open.chains.push(chain_header(src, n, line)?);
        } else if let Some(rule) = appended(line) {
            open.rules += 1;
            if open.name == "mangle" {
                let words = tokens(rule).map_err(|m| ImportError::at(&src.label, n, m))?;
                if words.is_empty() {
                    return Err(ImportError::at(&src.label, n, "-A without a chain"));
                }
                open.mangle.push((n, words));
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
        None => Ok(()),
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
