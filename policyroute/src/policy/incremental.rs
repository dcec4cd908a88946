//! Reading a policy file again after an edit: a `[[rule]]` table whose text is the same as
//! at the last read is taken from that read instead of being parsed and checked again, so
//! a re-read costs one pass over the text (to split and hash it) plus the edited tables.
//! Anything unusual, and any problem at all, falls back to reading the whole file, which
//! is also what gives the exact error messages.
use std::hash::Hasher;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::{read, rt_tables::RtTables, Policy, PolicyRule, Target};

/// Digests of a file's parts at its last read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// Everything but the `[[rule]]` tables (so adding a rule leaves it alone).
    pub head: u64,
    /// Each `[[rule]]` table's text, in order.
    pub rules: Vec<u64>,
}

/// A file cut into its `[[rule]]` tables and the rest, with their digests.
pub struct Split {
    /// The text without its `[[rule]]` tables.
    head: String,
    /// The line in the file of each line of `head` (1-based both).
    head_lines: Vec<usize>,
    head_digest: u64,
    /// Where each `[[rule]]` table is in the text, and its digest.
    rules: Vec<std::ops::Range<usize>>,
    rule_digests: Vec<u64>,
}

impl Split {
    pub fn digests(&self) -> Digests {
        Digests {
            head: self.head_digest,
            rules: self.rule_digests.clone(),
        }
    }
}

/// A stable 64-bit digest (SipHash with fixed keys).
fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

enum Line {
    RuleHeader,
    OtherHeader,
    /// A header that mentions `rule` in another way (`[rule.x]`, `[[rule.x]]`, quoted).
    Unusual,
    Other,
}

fn classify(line: &str) -> Line {
    // Most lines are `key = value`: only a line whose first character is `[` is a header.
    let t = line.trim_start_matches([' ', '\t']);
    if !t.starts_with('[') {
        return Line::Other;
    }
    let header = t.split('#').next().unwrap_or_default().trim_end();
    match header {
        "[[rule]]" => Line::RuleHeader,
        h if h.contains("rule") => Line::Unusual,
        _ => Line::OtherHeader,
    }
}

/// `None` when the file uses what the split cannot follow safely (multi-line strings, other
/// tables under `rule`).
pub fn split(text: &str) -> Option<Split> {
    let finder = |needle: &str| memchr::memmem::find(text.as_bytes(), needle.as_bytes());
    if finder("\"\"\"").is_some() || finder("'''").is_some() {
        return None;
    }
    let mut head = String::with_capacity(text.len() / 16);
    let mut head_lines = Vec::new();
    let mut head_hash = std::hash::DefaultHasher::new();
    let mut rules = Vec::new();
    let mut rule_start: Option<usize> = None;
    let mut newlines = memchr::memchr_iter(b'\n', text.as_bytes());
    let (mut pos, mut number) = (0, 0);
    while pos < text.len() {
        let end = newlines.next().map_or(text.len(), |i| i + 1);
        let line = &text[pos..end];
        number += 1;
        match classify(line) {
            Line::Unusual => return None,
            Line::Other => {}
            header => {
                if let Some(start) = rule_start.take() {
                    rules.push(start..pos);
                }
                if matches!(header, Line::RuleHeader) {
                    rule_start = Some(pos);
                }
            }
        }
        if rule_start.is_none() {
            head.push_str(line);
            head_lines.push(number);
            head_hash.write(line.as_bytes());
        }
        pos = end;
    }
    if let Some(start) = rule_start {
        rules.push(start..text.len());
    }
    let rule_digests = rules
        .iter()
        .map(|r| digest(text[r.clone()].as_bytes()))
        .collect();
    Some(Split {
        head,
        head_lines,
        head_digest: head_hash.finish(),
        rules,
        rule_digests,
    })
}

/// The digests of `text`, for the next read; `None` when it cannot be split.
pub fn digests(text: &str) -> Option<Digests> {
    Some(split(text)?.digests())
}

/// Reads `text` again, taking unchanged rules from `previous` (read from a text whose
/// digests are `digests`). `None` when the shortcut does not apply or anything is wrong.
pub(super) fn reread(
    text: &str,
    split: &Split,
    label: &str,
    tables: &RtTables,
    previous: &Policy,
    digests: &Digests,
) -> Option<Policy> {
    if split.head_digest != digests.head || previous.rules.len() != digests.rules.len() {
        return None;
    }
    let mut head = read::policy(&split.head, label, tables).ok()?;
    // A list file may have changed while the policy's text did not.
    if !head.rules.is_empty() || !head.sets.is_empty() || !previous.sets.is_empty() {
        return None;
    }
    // Lines the head's values were read at, as lines of the file.
    let origin = &mut head.origin;
    for line in origin
        .gateway_dev
        .iter_mut()
        .chain(&mut origin.ingress)
        .chain(&mut origin.egress)
    {
        *line = *split.head_lines.get(line.checked_sub(1)?)?;
    }
    let earlier: FxHashMap<u64, usize> = digests
        .rules
        .iter()
        .enumerate()
        .map(|(i, d)| (*d, i))
        .collect();
    let mut rules = Vec::with_capacity(split.rules.len());
    let mut reused = vec![false; previous.rules.len()];
    let mut parsed = Vec::new();
    for (i, (range, d)) in split.rules.iter().zip(&split.rule_digests).enumerate() {
        let table = &text[range.clone()];
        let same = earlier.get(d).map(|&j| (j, &previous.rules[j]));
        // A default name (`rule-N`) is the table's position: reused only in place.
        let reusable = same.filter(|(j, r)| *j == i || !is_default_name(&r.name, *j));
        rules.push(match reusable {
            // The same table twice: its name twice, which the full read reports.
            Some((j, _)) if std::mem::replace(&mut reused[j], true) => return None,
            Some((_, rule)) => rule.clone(),
            None => {
                parsed.push(i);
                read::rule_alone(table, label, i + 1, head.mark_mask)?
            }
        });
    }
    let policy = Policy { rules, ..head };
    consistent(&policy, &parsed).then_some(policy)
}

fn is_default_name(name: &str, index: usize) -> bool {
    name.strip_prefix("rule-")
        .and_then(|n| n.parse::<usize>().ok())
        == Some(index + 1)
}

/// The checks across rules that reading them one by one skips: unique names, known
/// gateways, and gateway marks derived without regard to the rules' raw marks (the head
/// was read alone) that therefore must not collide with one. Rules taken from the last
/// read passed them under the same head and have distinct names, so only the `parsed`
/// ones (by index) need them: a scan per edited rule, or one set when many were edited.
fn consistent(policy: &Policy, parsed: &[usize]) -> bool {
    let rules = &policy.rules;
    let valid_target = |r: &PolicyRule| match &r.target {
        Target::Gateway(g) => policy.gateway(g).is_some() || policy.group(g).is_some(),
        Target::Mark(m) => policy.gateways.iter().all(|g| g.mark != *m),
    };
    if parsed.len() > 16 {
        let mut names = FxHashSet::default();
        return rules
            .iter()
            .all(|r| names.insert(r.name.as_str()) && valid_target(r));
    }
    parsed.iter().all(|&i| {
        let name = &rules[i].name;
        let clashes = rules.iter().filter(|r| &r.name == name).count() > 1;
        !clashes && valid_target(&rules[i])
    })
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    fn tables() -> RtTables {
        RtTables::builtin()
    }

    /// A gateway, 40 rules (every fifth unnamed, two with raw marks) and `[attach]` last.
    fn base() -> Vec<String> {
        let mut parts = vec![
            "mark_mask = 0xff\n\n[[gateway]]\nname = \"isp2\"\ndev = \"wan2\"\ntable = 100\n\n"
                .to_string(),
        ];
        for i in 0..40 {
            let name = if i % 5 == 0 {
                String::new()
            } else {
                format!("name = \"r{i}\"\n")
            };
            let target = if i % 17 == 3 {
                format!("mark = {}", 0x40 + i)
            } else {
                "gateway = \"isp2\"".into()
            };
            parts.push(format!(
                "[[rule]]\n{name}proto = \"tcp\"\ndport = {}\n{target}\n\n",
                1000 + i
            ));
        }
        parts.push("[attach]\ningress = [\"lan0\"]\n".into());
        parts
    }

    fn full(text: &str) -> Result<Policy, crate::policy::ConfigError> {
        Policy::parse(text, "p.toml", &tables())
    }

    /// Reading `new` again after `old`; `Some` only where the shortcut applied.
    fn again(old: &str, new: &str) -> Option<Policy> {
        let before = full(old).expect("the old text is valid");
        let digests = digests(old).expect("splits");
        let split = split(new)?;
        reread(new, &split, "p.toml", &tables(), &before, &digests)
    }

    /// Wherever the shortcut answers, it answers as the full read does, lines included.
    fn same_as_full(old: &str, new: &str) -> bool {
        let quick = again(old, new);
        match (&quick, full(new)) {
            (Some(q), Ok(f)) => {
                assert_eq!(q, &f);
                assert_eq!(q.origin.gateway_dev, f.origin.gateway_dev);
                assert_eq!(q.origin.ingress, f.origin.ingress);
            }
            (Some(_), Err(e)) => panic!("the shortcut accepted what the full read refuses: {e}"),
            (None, _) => {}
        }
        quick.is_some()
    }

    #[test]
    fn common_edits_take_the_shortcut_and_read_the_same() {
        let old = base().concat();
        let mut changed = base();
        changed[8] = changed[8].replace("dport = 1007", "dport = 9999");
        assert!(same_as_full(&old, &changed.concat()), "one rule changed");
        let mut added = base();
        added.insert(
            20,
            "[[rule]]\nname = \"new\"\nproto = \"udp\"\ngateway = \"isp2\"\n\n".into(),
        );
        assert!(same_as_full(&old, &added.concat()), "a rule added");
        let mut removed = base();
        removed.remove(7);
        assert!(same_as_full(&old, &removed.concat()), "a rule removed");
        let mut moved = base();
        moved.swap(2, 3);
        assert!(same_as_full(&old, &moved.concat()), "named rules swapped");
        let mut unnamed = base();
        unnamed.remove(2);
        assert!(
            same_as_full(&old, &unnamed.concat()),
            "unnamed rules renumbered"
        );
    }

    #[test]
    fn what_the_shortcut_cannot_judge_goes_to_the_full_read() {
        let old = base().concat();
        // parts[k] is rule k - 1.
        let mut dup = base();
        dup[10] = dup[10].replace("name = \"r9\"", "name = \"r8\"");
        assert_ne!(dup.concat(), old);
        assert!(!same_as_full(&old, &dup.concat()), "a duplicate name");
        let mut unknown = base();
        unknown[5] = unknown[5].replace("gateway = \"isp2\"", "gateway = \"isp9\"");
        assert_ne!(unknown.concat(), old);
        assert!(!same_as_full(&old, &unknown.concat()), "an unknown gateway");
        let mut broken = base();
        broken[4] = broken[4].replace("dport = 1003", "dport = \"x\"");
        assert_ne!(broken.concat(), old);
        assert!(!same_as_full(&old, &broken.concat()), "a broken rule");
        let mask = old.replace("mark_mask = 0xff", "mark_mask = 0xfff");
        assert!(!same_as_full(&old, &mask), "the head changed");
        let nested = format!("{old}\n[[rule.x]]\na = 1\n");
        assert!(!same_as_full(&old, &nested), "a table under rule");
    }

    #[test]
    fn random_edits_read_the_same_either_way() {
        let mut rng = StdRng::seed_from_u64(7);
        let old = base().concat();
        let mut shortcuts = 0;
        for _ in 0..300 {
            let mut parts = base();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(1..parts.len() - 1);
                match rng.gen_range(0..6) {
                    0 => {
                        parts.remove(i);
                    }
                    1 => {
                        let copy = parts[i].clone();
                        parts.insert(rng.gen_range(1..parts.len() - 1), copy);
                    }
                    2 => {
                        let j = rng.gen_range(1..parts.len() - 1);
                        parts.swap(i, j);
                    }
                    3 => parts[i] = parts[i].replace("tcp", "udp"),
                    4 => parts[i] = parts[i].replace("dport = 10", "dport = 20"),
                    _ => parts[i] = parts[i].replace("isp2", "isp3"),
                }
            }
            if same_as_full(&old, &parts.concat()) {
                shortcuts += 1;
            }
        }
        assert!(
            shortcuts > 50,
            "the shortcut applied {shortcuts} times of 300"
        );
    }
}
