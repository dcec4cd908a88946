//! `CONNMARK --save-mark` and `--restore-mark`: a connection keeps the mark its first
//! packets got, and its later packets, replies included, are routed by it. The policy's
//! counterpart is a sticky gateway (a flow that came in through it is answered through
//! it; the rules decide the rest), so every gateway whose mark a connection can keep gets
//! `sticky = true`. A MARK rule that marks what comes in through a sticky gateway's own
//! device is what `sticky` does, and is not written as a rule.
use std::collections::BTreeSet;

use super::chains::{ConnmarkKind, ConnmarkOp};
use super::gateways::Gateways;
use super::ip_route::Route;
use super::iptables_save::MarkRule;
use super::order::Placed;
use super::Note;

/// A CONNMARK rule with the file it is in.
#[derive(Clone, Debug)]
pub struct FileOp {
    pub file: String,
    pub op: ConnmarkOp,
}

/// What a file's CONNMARK rules keep.
#[derive(Debug, Default)]
struct Kept {
    /// It restores, and saves or sets: a connection keeps a mark.
    paired: bool,
    /// The marks a connection can keep.
    marks: BTreeSet<u32>,
}

/// Makes the gateways a save and restore concern sticky; returns the rules still to write
/// and the remark that says what was made sticky.
pub fn sticky(
    ops: &[FileOp],
    placed: Vec<Placed>,
    gws: &mut Gateways,
    routes: &[Route],
    notes: &mut Vec<Note>,
) -> (Vec<Placed>, Option<String>) {
    let kept = |file: &str| kept_by(ops.iter().filter(|o| o.file == file).map(|o| &o.op));
    for (i, fo) in ops.iter().enumerate() {
        let why = match &fo.op.kind {
            _ if !kept(&fo.file).paired => Some(unpaired(&fo.op.kind).to_owned()),
            ConnmarkKind::SkipMarked if !restored_before(ops, i) => Some(
                "-m mark ! --mark 0 before any CONNMARK --restore-mark of its chain: match not \
                 supported"
                    .to_owned(),
            ),
            ConnmarkKind::Set(rule) => not_sticky_for(rule, gws),
            _ => None,
        };
        notes.extend(why.map(|why| Note::at(&fo.file, fo.op.line, why)));
    }
    let mut files: Vec<&FileOp> = ops.iter().collect();
    files.dedup_by(|a, b| a.file == b.file);
    for fo in files {
        for mark in kept(&fo.file).marks {
            let Some(g) = gws.by_mark.get(&mark).and_then(|name| {
                let name = name.clone();
                gws.list.iter_mut().find(|g| g.name == name)
            }) else {
                continue;
            };
            if g.sticky {
                continue;
            }
            if g.shares_main_uplink(routes) {
                let why = format!(
                    "CONNMARK: gateway {} shares {} with the main table's default route, \
                     where `sticky` cannot tell its connections from the main uplink's; not \
                     sticky",
                    g.name, g.dev
                );
                notes.push(Note::at(&fo.file, fo.op.line, why));
                continue;
            }
            g.sticky = true;
        }
    }
    let sticky: Vec<&str> = gws
        .list
        .iter()
        .filter(|g| g.sticky)
        .map(|g| g.name.as_str())
        .collect();
    let remark = (!sticky.is_empty()).then(|| {
        format!(
            "CONNMARK --save-mark/--restore-mark: sticky = true on {}: a connection that came \
             in through the gateway is answered through it whatever the rules say; every \
             other packet is classified by the rules (the CONNMARK rules' own conditions are \
             not kept).",
            sticky.join(", ")
        )
    });
    let rules = placed
        .into_iter()
        .filter(|p| keep_rule(p, &kept(&p.file), gws, notes))
        .collect();
    (rules, remark)
}

/// What one file's CONNMARK rules keep.
fn kept_by<'a>(ops: impl Iterator<Item = &'a ConnmarkOp>) -> Kept {
    let (mut restores, mut out) = (false, Kept::default());
    let mut keeps = false;
    for op in ops {
        match &op.kind {
            ConnmarkKind::Restore => restores = true,
            ConnmarkKind::Save { marks } => {
                keeps = true;
                out.marks.extend(marks);
            }
            ConnmarkKind::Set(rule) => {
                keeps = true;
                out.marks.insert(rule.mark);
            }
            ConnmarkKind::SkipMarked => {}
        }
    }
    out.paired = restores && keeps;
    if !out.paired {
        out.marks.clear();
    }
    out
}

/// Why a CONNMARK rule of a file without a save-and-restore pair does nothing.
fn unpaired(kind: &ConnmarkKind) -> &'static str {
    match kind {
        ConnmarkKind::Restore => {
            "CONNMARK --restore-mark: nothing in this file saves or sets a connection's mark; \
             not imported"
        }
        ConnmarkKind::Save { .. } | ConnmarkKind::Set(_) => {
            "CONNMARK: no --restore-mark in this file gives packets the connection's mark, so \
             it routes nothing; not imported"
        }
        ConnmarkKind::SkipMarked => "-m mark ! --mark 0: match not supported",
    }
}

/// A restore comes before the skip in its chain.
fn restored_before(ops: &[FileOp], at: usize) -> bool {
    let this = &ops[at];
    ops[..at].iter().any(|o| {
        o.file == this.file
            && o.op.hook == this.op.hook
            && matches!(o.op.kind, ConnmarkKind::Restore)
    })
}

/// The device of the sticky gateway that a rule marking what comes in on it stands for.
fn sticky_device<'a>(rule: &MarkRule, gws: &'a Gateways) -> Option<&'a str> {
    let name = gws.by_mark.get(&rule.mark)?;
    let g = gws.list.iter().find(|g| &g.name == name && g.sticky)?;
    (rule.iif.as_deref() == Some(g.dev.as_str())).then_some(g.dev.as_str())
}

/// Why a `CONNMARK --set-mark` is not all that `sticky` does, or nothing.
fn not_sticky_for(rule: &MarkRule, gws: &Gateways) -> Option<String> {
    let Some(g) = gws
        .by_mark
        .get(&rule.mark)
        .and_then(|name| gws.list.iter().find(|g| &g.name == name))
    else {
        return Some(format!(
            "CONNMARK --set-mark {:#x}: no gateway has this mark; not imported",
            rule.mark
        ));
    };
    if rule.iif.as_deref() != Some(g.dev.as_str()) {
        return Some(format!(
            "CONNMARK --set-mark {:#x} for packets that do not come in through {}: a sticky \
             gateway remembers the flows that come in through its device only",
            rule.mark, g.dev
        ));
    }
    narrower_than_sticky(rule, &g.dev)
}

/// Sticky remembers every flow through the device; a rule with more conditions, fewer.
fn narrower_than_sticky(rule: &MarkRule, dev: &str) -> Option<String> {
    (rule.matcher != Default::default()).then(|| {
        format!(
            "sticky remembers every flow that comes in through {dev}, not only those with {}",
            rule.matcher
        )
    })
}

/// Whether a MARK rule is still written: not when the sticky gateway stands for it, nor
/// when it marks first packets only and no save and restore carries the mark on.
fn keep_rule(p: &Placed, kept: &Kept, gws: &Gateways, notes: &mut Vec<Note>) -> bool {
    let r = &p.rule;
    let note = |why: String| Note::at(&p.file, r.line, why);
    if kept.paired {
        if let Some(dev) = sticky_device(r, gws) {
            notes.extend(narrower_than_sticky(r, dev).map(note));
            return false;
        }
    }
    if r.new_only && !kept.marks.contains(&r.mark) {
        notes.push(note(
            "-m conntrack --ctstate NEW: only a connection's first packet gets this mark, and \
             no CONNMARK save and restore gives it to the rest; not imported"
                .to_owned(),
        ));
        return false;
    }
    true
}
