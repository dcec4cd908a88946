//! The mangle table's rules in the order a packet meets them: the rules of PREROUTING and
//! OUTPUT in file order, a jump into a user-defined chain replaced by that chain's rules,
//! each narrowed to what the jump matches too. `RETURN` in a user-defined chain ends only
//! that chain: it becomes a rule of mark 0 where nothing after the jump could mark what it
//! matches, and is listed where something could. A `RETURN` or `ACCEPT` that skips no
//! mark is left out: it changes nothing.
use std::collections::{BTreeMap, BTreeSet};

use super::both::{both, same};
use super::iptables_save::{Hook, MarkRule, Via};
use super::mark_rule::{self, Connmark, Verdict};
use super::order::can_both_match;
use super::{ImportError, Note, Source};
use crate::policy::matcher::Match;

/// Nested jumps followed at most: nf_tables' own limit (its jump stack holds 16).
const MAX_DEPTH: usize = 16;
/// Rules met more than once, at most: chains that jump twice into the next double what a
/// packet can meet with each level, so a small file could otherwise expand without bound
/// (and the rule order's pairwise checks with it).
const MAX_REVISITS: usize = 10_000;

const NOT_ROUTING: [&str; 3] = ["INPUT", "FORWARD", "POSTROUTING"];

/// A `CONNMARK` rule, or the skip of marked packets that follows a restore, where packets
/// meet it.
#[derive(Clone, Debug)]
pub struct ConnmarkOp {
    pub line: usize,
    pub hook: Hook,
    pub kind: ConnmarkKind,
}

#[derive(Clone, Debug)]
pub enum ConnmarkKind {
    Restore,
    /// The marks the MARK rules before it (in its hook) set; of a save after routing
    /// (POSTROUTING, say), every mark.
    Save {
        marks: Vec<u32>,
    },
    /// The connection's mark set directly: the rule's conditions (the jumps' included).
    Set(Box<MarkRule>),
    /// `-m mark ! --mark 0 -j ACCEPT|RETURN`.
    SkipMarked,
}

#[derive(Debug, Default)]
pub struct Walked {
    pub rules: Vec<MarkRule>,
    pub connmark: Vec<ConnmarkOp>,
    pub notes: Vec<Note>,
}

/// `rules`: the table's `-A` lines (line, words with the chain first), in file order;
/// `declared`: its `:CHAIN` names.
pub fn walk(
    src: &Source,
    rules: &[(usize, Vec<String>)],
    declared: &[String],
) -> Result<Walked, ImportError> {
    let mut by_chain: BTreeMap<&str, Vec<(usize, &[String])>> = BTreeMap::new();
    for (line, words) in rules {
        if let Some((chain, args)) = words.split_first() {
            by_chain.entry(chain).or_default().push((*line, args));
        }
    }
    // A chain with rules is one to jump to even if the file forgot its `:CHAIN` line.
    let mut chains: Vec<String> = declared.to_vec();
    chains.extend(by_chain.keys().map(|c| (*c).to_owned()));
    let mut w = Walker {
        src,
        chains,
        by_chain,
        followed: BTreeSet::new(),
        visits: 0,
        max_visits: rules.len() + MAX_REVISITS,
        open_returns: Vec::new(),
        returns: BTreeMap::new(),
        out: Walked::default(),
    };
    let mut late_saves = Vec::new();
    for (line, words) in rules {
        let Some((chain, args)) = words.split_first() else {
            continue;
        };
        let hook = match chain.as_str() {
            "PREROUTING" => Hook::Forwarded,
            "OUTPUT" => Hook::Local,
            // After routing a save still keeps the mark for the connection's next packets.
            c if NOT_ROUTING.contains(&c) && saves(args) => {
                late_saves.push(*line);
                continue;
            }
            c if NOT_ROUTING.contains(&c) => {
                let why = format!(
                    "chain {c}: a mark set here comes after the routing decision and chooses \
                     no route; not imported"
                );
                w.note(*line, why);
                continue;
            }
            // A user-defined chain: its rules are met through jumps.
            _ => continue,
        };
        w.rule(*line, hook, args, &Context::default())?;
    }
    // Packets meet these after PREROUTING or OUTPUT: every mark set there.
    let marks: Vec<u32> = w
        .out
        .rules
        .iter()
        .filter(|r| !r.ends_chain)
        .map(|r| r.mark)
        .collect();
    w.out
        .connmark
        .extend(late_saves.into_iter().map(|line| ConnmarkOp {
            line,
            hook: Hook::Forwarded,
            kind: ConnmarkKind::Save {
                marks: marks.clone(),
            },
        }));
    w.unreached();
    w.ends();
    Ok(w.out)
}

/// `-j CONNMARK --save-mark`, whatever its conditions.
fn saves(args: &[String]) -> bool {
    let has = |word: &str| args.iter().any(|a| a == word);
    has("CONNMARK") && has("--save-mark")
}

/// What the jumps that led to a rule match, and the jumps themselves.
#[derive(Clone, Debug, Default)]
struct Context {
    matcher: Match,
    iif: Option<String>,
    new_only: bool,
    via: Vec<Via>,
}

impl Context {
    /// The rule as packets that get here meet it; `None` when no packet can.
    fn narrow(&self, mut rule: MarkRule) -> Option<MarkRule> {
        rule.matcher = both(&self.matcher, &rule.matcher)?;
        rule.iif = same(&self.iif, &rule.iif)?;
        rule.new_only |= self.new_only;
        rule.via.clone_from(&self.via);
        Some(rule)
    }
}

struct Walker<'a> {
    src: &'a Source,
    chains: Vec<String>,
    by_chain: BTreeMap<&'a str, Vec<(usize, &'a [String])>>,
    /// User-defined chains some jump entered.
    followed: BTreeSet<String>,
    visits: usize,
    max_visits: usize,
    /// `RETURN`s of the user-defined chains being walked: index in `out.rules`, and how
    /// many jumps deep they are.
    open_returns: Vec<(usize, usize)>,
    /// `RETURN`s of user-defined chains by index: where the rules after their jump begin.
    returns: BTreeMap<usize, usize>,
    out: Walked,
}

impl Walker<'_> {
    fn note(&mut self, line: usize, why: impl Into<String>) {
        self.out.notes.push(Note::new(self.src, line, why));
    }

    fn rule(
        &mut self,
        line: usize,
        hook: Hook,
        args: &[String],
        ctx: &Context,
    ) -> Result<(), ImportError> {
        self.visits += 1;
        if self.visits > self.max_visits {
            if self.visits == self.max_visits + 1 {
                let why = format!(
                    "following the jumps meets rules more than {MAX_REVISITS} times more \
                     than once: this one and those after it are not imported"
                );
                self.note(line, why);
            }
            return Ok(());
        }
        let verdict = mark_rule::read(line, hook, args, &self.chains)
            .map_err(|m| ImportError::at(&self.src.label, line, m))?;
        match verdict {
            Verdict::Rule(r) => self.out.rules.extend(ctx.narrow(r)),
            Verdict::Return(r) => {
                if let Some(r) = ctx.narrow(r) {
                    if !ctx.via.is_empty() {
                        self.open_returns
                            .push((self.out.rules.len(), ctx.via.len()));
                    }
                    self.out.rules.push(r);
                }
            }
            Verdict::Jump { chain, rule } => self.jump(line, hook, chain, rule, ctx)?,
            Verdict::Connmark { op, rule } => self.connmark(line, hook, op, rule, ctx),
            Verdict::SkipMarked => self.out.connmark.push(ConnmarkOp {
                line,
                hook,
                kind: ConnmarkKind::SkipMarked,
            }),
            Verdict::Unexpressed(why) => self.note(line, why),
        }
        Ok(())
    }

    fn jump(
        &mut self,
        line: usize,
        hook: Hook,
        chain: String,
        rule: MarkRule,
        ctx: &Context,
    ) -> Result<(), ImportError> {
        if ctx.via.iter().any(|v| v.chain == chain) {
            let path: Vec<&str> = ctx.via.iter().map(|v| v.chain.as_str()).collect();
            let why = format!(
                "-j {chain}: a loop ({} -> {chain}); not followed",
                path.join(" -> ")
            );
            self.note(line, why);
            return Ok(());
        }
        if ctx.via.len() >= MAX_DEPTH {
            let why = format!("-j {chain}: more than {MAX_DEPTH} nested jumps; not followed");
            self.note(line, why);
            return Ok(());
        }
        // The jump's conditions and those of the jumps before it exclude each other.
        let Some(entry) = ctx.narrow(rule) else {
            return Ok(());
        };
        self.followed.insert(chain.clone());
        let mut via = ctx.via.clone();
        via.push(Via {
            line,
            chain: chain.clone(),
        });
        let inner = Context {
            matcher: entry.matcher,
            iif: entry.iif,
            new_only: entry.new_only,
            via,
        };
        let rules = self
            .by_chain
            .get(chain.as_str())
            .cloned()
            .unwrap_or_default();
        for (n, args) in rules {
            self.rule(n, hook, args, &inner)?;
        }
        // This chain's RETURNs end here: the caller's rules after the jump come next.
        let end = self.out.rules.len();
        let depth = inner.via.len();
        let returns = &mut self.returns;
        self.open_returns.retain(|&(at, d)| {
            if d == depth {
                returns.insert(at, end);
            }
            d != depth
        });
        Ok(())
    }

    fn connmark(&mut self, line: usize, hook: Hook, op: Connmark, rule: MarkRule, ctx: &Context) {
        let kind = match op {
            Connmark::Restore => ConnmarkKind::Restore,
            Connmark::Save => ConnmarkKind::Save {
                marks: self
                    .out
                    .rules
                    .iter()
                    .filter(|r| r.hook == hook && !r.ends_chain)
                    .map(|r| r.mark)
                    .collect(),
            },
            Connmark::Set => match ctx.narrow(rule) {
                Some(r) => ConnmarkKind::Set(Box::new(r)),
                None => return,
            },
        };
        self.out.connmark.push(ConnmarkOp { line, hook, kind });
    }

    /// User-defined chains no followed jump enters: one note each, at its first rule.
    fn unreached(&mut self) {
        let builtin = |c: &str| NOT_ROUTING.contains(&c) || c == "PREROUTING" || c == "OUTPUT";
        let unreached: Vec<(usize, String)> = self
            .by_chain
            .iter()
            .filter(|(c, _)| !builtin(c) && !self.followed.contains(**c))
            .map(|(c, rules)| {
                let why = format!(
                    "chain {c}: its {} rule(s) are not reached by a followed jump from \
                     PREROUTING or OUTPUT; not imported",
                    rules.len()
                );
                (rules[0].0, why)
            })
            .collect();
        for (line, why) in unreached {
            self.note(line, why);
        }
    }

    /// Leaves out the `RETURN`s and `ACCEPT`s that skip no mark, and lists those of
    /// user-defined chains a rule of mark 0 cannot stand for.
    fn ends(&mut self) {
        let rules = &self.out.rules;
        let n = rules.len();
        let mut keep = vec![true; n];
        let mut notes = Vec::new();
        for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.ends_chain) {
            let skips =
                |later: &[MarkRule]| later.iter().any(|o| !o.ends_chain && can_both_match(r, o));
            let end = self.returns.get(&i).copied().unwrap_or(n);
            if !skips(&rules[i + 1..end]) {
                keep[i] = false;
            } else if skips(&rules[end..]) {
                keep[i] = false;
                let jump = r.via.last().map_or(0, |v| v.line);
                let chain = r.via.last().map_or("", |v| v.chain.as_str());
                let why = format!(
                    "-j RETURN in chain {chain}: what it matches goes on with the rules after \
                     the jump (line {jump}), which a policy rule of mark = 0 would skip too; \
                     not imported"
                );
                notes.push(Note::new(self.src, r.line, why));
            }
        }
        self.out.notes.extend(notes);
        let mut kept = keep.into_iter();
        self.out.rules.retain(|_| kept.next().unwrap_or(true));
    }
}
