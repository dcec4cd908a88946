//! Compiles an ordered rule list into tuple-space tables: shapes and hash entries.
//!
//! A shape is the set of fields an entry matches and their masks (address prefix lengths,
//! port block masks, whether protocol and DSCP are keyed). Every rule becomes one entry
//! per (family, source-port block, destination-port block); entries sharing a shape share
//! one hash lookup per packet. The packet cost is therefore bounded by the number of
//! shapes per family (at most `MAX_SHAPES`), whatever the number of rules.
//!
//! Address conditions that are sets, and literal prefixes of a field that comes in many
//! lengths, are keyed by the address's class instead of its masked bits (see `classes`):
//! one trie walk per field replaces a shape per prefix length.
use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use ipnet::IpNet;
use policyroute_common::{
    RuleKey, RuleValue, Shape, ShapeTable, MAX_SHAPES, SHAPE_DSCP, SHAPE_DST_CLASS, SHAPE_PORTS,
    SHAPE_PROTO, SHAPE_SPORT, SHAPE_SRC, SHAPE_SRC_CLASS, TRIE_NONE,
};

use super::classes::{Classes, Field};
use super::prefix_trie::Image;
use super::targets::TargetIds;
use crate::policy::{
    matcher::{Family, Match, Rule, RuleError},
    Policy, Target,
};

/// Everything that identifies a shape within a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeDesc {
    pub family: Family,
    pub flags: u8,
    pub src_len: u8,
    pub dst_len: u8,
    pub sport_mask: u16,
    pub dport_mask: u16,
}

/// Compiled form of a policy, ready to be written into the maps.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Shape tables indexed by `Family::index()`.
    pub tables: [ShapeTable; 2],
    pub entries: HashMap<RuleKey, RuleValue>,
    pub shapes: BTreeMap<ShapeDesc, u16>,
    /// Counter slots the rules use are all below this.
    pub counter_slots: usize,
    /// Address classes of the conditions that go through tries.
    pub classes: Classes,
    /// The tries (roots in `tables`, relative to the image).
    pub trie: Image,
}

impl Compiled {
    /// Whether entries depend on classes (whose ids depend on the whole policy).
    pub fn uses_classes(&self) -> bool {
        !self.classes.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("rule {index} ({name}): {source}")]
    Rule {
        index: usize,
        name: String,
        source: RuleError,
    },
    #[error(
        "the policy needs {count} distinct {family} rule shapes (combinations of protocol, \
         DSCP and port-range blocks), the classifier handles {MAX_SHAPES}; use port ranges \
         that align to powers of two"
    )]
    TooManyShapes { family: Family, count: usize },
    #[error(
        "the policy routes to {count} gateways and group/when_down pairs, the classifier \
         holds {}; use fewer",
        policyroute_common::MAX_TARGETS
    )]
    TooManyTargets { count: usize },
}

/// Compiles `rules` (first match wins) with marks restricted to `mark_mask`.
///
/// `previous` keeps shape ids stable across updates: shapes that already exist keep their
/// id, so unchanged entries keep their keys and an update touches only what changed.
pub fn compile(
    rules: &[Rule],
    mark_mask: u32,
    previous: &BTreeMap<ShapeDesc, u16>,
) -> Result<Compiled, CompileError> {
    let slots: Vec<u32> = (0..rules.len() as u32).collect();
    compile_with_slots(rules, &slots, mark_mask, previous)
}

/// [`compile`] with the counter slot of each rule given (`slots[i]` for `rules[i]`), so a
/// rule keeps its counters across updates that add, remove or reorder others.
pub fn compile_with_slots(
    rules: &[Rule],
    slots: &[u32],
    mark_mask: u32,
    previous: &BTreeMap<ShapeDesc, u16>,
) -> Result<Compiled, CompileError> {
    let rules = rules
        .iter()
        .map(|r| (r.name.as_str(), &r.matcher, r.mark, 0));
    compile_rules(rules, slots, mark_mask, previous)
}

/// [`compile_with_slots`] of a policy's rules, read in place (a 100,000-rule policy is not
/// copied for it). A rule with a raw mark sets it; one that names a gateway or group
/// carries the target's id from `targets`.
pub fn compile_policy(
    policy: &Policy,
    slots: &[u32],
    previous: &BTreeMap<ShapeDesc, u16>,
    targets: &TargetIds,
) -> Result<Compiled, CompileError> {
    if targets.len() > policyroute_common::MAX_TARGETS as usize {
        return Err(CompileError::TooManyTargets {
            count: targets.len(),
        });
    }
    let rules = policy.rules.iter().map(|r| {
        let (mark, target) = match &r.target {
            Target::Mark(mark) => (*mark, 0),
            Target::Gateway(name) => (0, targets.id(name, r.when_down).unwrap_or(0)),
        };
        (r.name.as_str(), &r.matcher, mark, target)
    });
    compile_rules(rules, slots, policy.mark_mask, previous)
}

/// Rules as (name, conditions, mark, target id), first match wins.
fn compile_rules<'a>(
    rules: impl ExactSizeIterator<Item = (&'a str, &'a Match, u32, u32)>,
    slots: &[u32],
    mark_mask: u32,
    previous: &BTreeMap<ShapeDesc, u16>,
) -> Result<Compiled, CompileError> {
    assert_eq!(rules.len(), slots.len(), "one counter slot per rule");
    let rules: Vec<_> = rules.collect();
    let classes = Classes::of(rules.iter().map(|r| r.1));
    // Usually an entry per family.
    let mut staged: Vec<(ShapeDesc, RuleKey, RuleValue)> = Vec::with_capacity(rules.len() * 2);
    for (index, (name, matcher, mark, target)) in rules.into_iter().enumerate() {
        let fail = |source| CompileError::Rule {
            index,
            name: name.to_string(),
            source,
        };
        matcher.validate().map_err(fail)?;
        let value = RuleValue {
            prio: index as u32,
            mark: mark & mark_mask,
            counter: slots[index],
            target,
        };
        for family in matcher.families().map_err(fail)? {
            expand(matcher, family, value, &classes, &mut staged);
        }
    }
    let shapes = assign_ids(&staged, previous)?;
    let ids: HashMap<ShapeDesc, u16> = shapes.iter().map(|(d, id)| (*d, *id)).collect();
    let mut entries: HashMap<RuleKey, RuleValue> =
        HashMap::with_capacity_and_hasher(staged.len(), Default::default());
    let mut min_prio: HashMap<ShapeDesc, u32> = HashMap::default();
    for (desc, mut key, value) in staged {
        key.shape = ids[&desc];
        // Identical keys: the earlier rule shadows the later one completely.
        entries.entry(key).or_insert(value);
        let m = min_prio.entry(desc).or_insert(value.prio);
        *m = (*m).min(value.prio);
    }
    let mut tables = [Family::V4, Family::V6].map(|f| table(f, &shapes, &min_prio, mark_mask));
    let trie = tries(&classes, &mut tables);
    Ok(Compiled {
        tables,
        entries,
        shapes,
        counter_slots: slots.iter().map(|&s| s as usize + 1).max().unwrap_or(0),
        classes,
        trie,
    })
}

/// The tries of every field that has classes, their roots noted in the family's table.
fn tries(classes: &Classes, tables: &mut [ShapeTable; 2]) -> Image {
    let mut image = Image::default();
    for ((family, field), fc) in &classes.fields {
        let root = image.add(&mut fc.prefixes.clone());
        let table = &mut tables[family.index() as usize];
        match field {
            Field::Src => table.src_root = root,
            Field::Dst => table.dst_root = root,
        }
    }
    image
}

/// The keys `rules` have in tables whose shapes are `shapes`; `None` when a rule needs a
/// shape they lack (or cannot match).
pub fn keys_of<'a>(
    rules: impl Iterator<Item = &'a Match>,
    shapes: &BTreeMap<ShapeDesc, u16>,
) -> Option<Vec<RuleKey>> {
    let mut staged = Vec::new();
    let none = Classes::default();
    for matcher in rules {
        // Class ids depend on the whole policy: the caller compares every entry instead.
        if matcher.src_set.is_some() || matcher.dst_set.is_some() {
            return None;
        }
        for family in matcher.families().ok()? {
            expand(matcher, family, RuleValue::default(), &none, &mut staged);
        }
    }
    staged
        .into_iter()
        .map(|(desc, key, _)| {
            Some(RuleKey {
                shape: *shapes.get(&desc)?,
                ..key
            })
        })
        .collect()
}

fn expand(
    m: &Match,
    family: Family,
    value: RuleValue,
    classes: &Classes,
    out: &mut Vec<(ShapeDesc, RuleKey, RuleValue)>,
) {
    // No condition: one block that masks nothing (no allocation: most rules have one).
    const ANY: &[(u16, u16)] = &[(0, 0)];
    let blocks = |ports: &Option<crate::policy::ports::PortSet>| {
        ports
            .as_ref()
            .map_or(std::borrow::Cow::Borrowed(ANY), |s| s.prefixes().into())
    };
    let (sports, dports) = (blocks(&m.sport), blocks(&m.dport));
    let mut flags = 0;
    if m.proto.is_some() {
        flags |= SHAPE_PROTO;
    }
    if m.dscp.is_some() {
        flags |= SHAPE_DSCP;
    }
    if m.has_ports() {
        flags |= SHAPE_PORTS;
    }
    if m.sport.is_some() {
        flags |= SHAPE_SPORT;
    }
    let srcs = address(m.src.as_ref(), classes.condition_of(m, family, Field::Src));
    let dsts = address(m.dst.as_ref(), classes.condition_of(m, family, Field::Dst));
    // A set always goes through a trie; never key it as "any".
    if (m.src_set.is_some() && !srcs.class) || (m.dst_set.is_some() && !dsts.class) {
        return;
    }
    if srcs.class || srcs.len > 0 {
        flags |= SHAPE_SRC;
    }
    if srcs.class {
        flags |= SHAPE_SRC_CLASS;
    }
    if dsts.class {
        flags |= SHAPE_DST_CLASS;
    }
    for src in srcs.words.iter() {
        for dst in dsts.words.iter() {
            for &(sp, sport_mask) in sports.iter() {
                for &(dp, dport_mask) in dports.iter() {
                    let desc = ShapeDesc {
                        family,
                        flags,
                        src_len: srcs.len,
                        dst_len: dsts.len,
                        sport_mask,
                        dport_mask,
                    };
                    let key = RuleKey {
                        shape: 0,
                        proto: m.proto.unwrap_or(0),
                        dscp: m.dscp.unwrap_or(0),
                        sport: sp,
                        dport: dp,
                        src: *src,
                        dst: *dst,
                    };
                    out.push((desc, key, value));
                }
            }
        }
    }
}

/// How one address field is keyed: by its masked bits (one key), or by class (a key per
/// class holding the condition, none when no class does).
struct Keyed {
    class: bool,
    len: u8,
    words: Vec<[u32; 4]>,
}

fn address(net: Option<&IpNet>, classes: Option<&[u32]>) -> Keyed {
    match classes {
        Some(ids) => Keyed {
            class: true,
            len: 0,
            words: ids.iter().map(|&c| [c, 0, 0, 0]).collect(),
        },
        None => {
            let (words, len) = prefix_words(net);
            Keyed {
                class: false,
                len,
                words: vec![words],
            }
        }
    }
}

/// The prefix's address as the classifier sees it (network-order bytes as native words)
/// and its length; no prefix is length 0.
fn prefix_words(net: Option<&IpNet>) -> ([u32; 4], u8) {
    match net {
        None => ([0; 4], 0),
        Some(n) => (addr_words(&n.network()), n.prefix_len()),
    }
}

pub fn addr_words(addr: &std::net::IpAddr) -> [u32; 4] {
    let mut bytes = [0u8; 16];
    match addr {
        std::net::IpAddr::V4(a) => bytes[..4].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => bytes.copy_from_slice(&a.octets()),
    }
    std::array::from_fn(|i| u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()))
}

/// Mask words for a prefix length within a family's address width.
pub fn mask_words(len: u8) -> [u32; 4] {
    let bits: u128 = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    let bytes = bits.to_be_bytes();
    std::array::from_fn(|i| u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()))
}

/// Keeps ids of shapes present in `previous`; new shapes get the lowest free ids.
fn assign_ids(
    staged: &[(ShapeDesc, RuleKey, RuleValue)],
    previous: &BTreeMap<ShapeDesc, u16>,
) -> Result<BTreeMap<ShapeDesc, u16>, CompileError> {
    // Few distinct shapes among many entries: a hash set first, then in order.
    let distinct: rustc_hash::FxHashSet<ShapeDesc> = staged.iter().map(|s| s.0).collect();
    let wanted: std::collections::BTreeSet<ShapeDesc> = distinct.into_iter().collect();
    for family in [Family::V4, Family::V6] {
        let count = wanted.iter().filter(|d| d.family == family).count();
        if count > MAX_SHAPES {
            return Err(CompileError::TooManyShapes { family, count });
        }
    }
    let mut ids: BTreeMap<ShapeDesc, u16> = wanted
        .iter()
        .filter_map(|d| previous.get(d).map(|&id| (*d, id)))
        .collect();
    let mut used: std::collections::BTreeSet<u16> = ids.values().copied().collect();
    let mut next = 0u16;
    for d in &wanted {
        if ids.contains_key(d) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        ids.insert(*d, next);
        used.insert(next);
    }
    Ok(ids)
}

fn table(
    family: Family,
    shapes: &BTreeMap<ShapeDesc, u16>,
    min_prio: &HashMap<ShapeDesc, u32>,
    mark_mask: u32,
) -> ShapeTable {
    let mut list: Vec<(u32, Shape)> = shapes
        .iter()
        .filter(|(d, _)| d.family == family)
        .map(|(d, &id)| (min_prio[d], shape(d, id, min_prio[d])))
        .collect();
    list.sort_by_key(|(p, s)| (*p, s.id));
    let mut t = ShapeTable {
        len: list.len() as u32,
        mark_mask,
        src_root: TRIE_NONE,
        dst_root: TRIE_NONE,
        ..ShapeTable::default()
    };
    for (slot, (_, s)) in t.shapes.iter_mut().zip(list) {
        *slot = s;
    }
    t
}

fn shape(d: &ShapeDesc, id: u16, min_prio: u32) -> Shape {
    Shape {
        id,
        flags: d.flags,
        _pad: 0,
        sport_mask: d.sport_mask,
        dport_mask: d.dport_mask,
        min_prio,
        src_mask: mask_words(d.src_len),
        dst_mask: mask_words(d.dst_len),
    }
}

/// Recovers the shape ids of a live table pair, for [`compile`]'s `previous`.
pub fn shapes_of(tables: &[ShapeTable; 2]) -> BTreeMap<ShapeDesc, u16> {
    let mut out = BTreeMap::new();
    for (family, t) in [Family::V4, Family::V6].into_iter().zip(tables) {
        for s in &t.shapes[..(t.len as usize).min(MAX_SHAPES)] {
            let desc = ShapeDesc {
                family,
                flags: s.flags,
                src_len: prefix_len(&s.src_mask),
                dst_len: prefix_len(&s.dst_mask),
                sport_mask: s.sport_mask,
                dport_mask: s.dport_mask,
            };
            out.insert(desc, s.id);
        }
    }
    out
}

fn prefix_len(mask: &[u32; 4]) -> u8 {
    mask.iter().map(|w| w.count_ones() as u8).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ports::PortSet;

    fn tcp_dport(name: &str, port: u16, mark: u32) -> Rule {
        Rule {
            name: name.into(),
            matcher: Match {
                proto: Some(6),
                dport: Some(PortSet::single(port)),
                ..Match::default()
            },
            mark,
        }
    }

    #[test]
    fn rules_of_one_shape_share_it_per_family() {
        let rules: Vec<Rule> = (0..100).map(|i| tcp_dport("r", 1000 + i, 1)).collect();
        let c = compile(&rules, u32::MAX, &BTreeMap::new()).unwrap();
        assert_eq!(c.tables[0].len, 1);
        assert_eq!(c.tables[1].len, 1);
        assert_eq!(c.entries.len(), 200);
    }

    #[test]
    fn shadowed_duplicate_keeps_the_first_rule() {
        let rules = vec![tcp_dport("a", 80, 1), tcp_dport("b", 80, 2)];
        let c = compile(&rules, u32::MAX, &BTreeMap::new()).unwrap();
        assert_eq!(c.entries.len(), 2);
        assert!(c.entries.values().all(|v| v.prio == 0 && v.mark == 1));
    }

    #[test]
    fn shape_ids_survive_recompilation() {
        let first = compile(&[tcp_dport("a", 80, 1)], u32::MAX, &BTreeMap::new()).unwrap();
        let mut rules = vec![Rule {
            name: "new".into(),
            matcher: Match {
                dscp: Some(46),
                ..Match::default()
            },
            mark: 3,
        }];
        rules.push(tcp_dport("a", 80, 1));
        let second = compile(&rules, u32::MAX, &shapes_of(&first.tables)).unwrap();
        for (desc, id) in &first.shapes {
            assert_eq!(second.shapes[desc], *id);
        }
        assert_eq!(shapes_of(&second.tables), second.shapes);
    }

    #[test]
    fn many_prefix_lengths_go_through_a_trie_not_a_refusal() {
        let rules: Vec<Rule> = (0..=MAX_SHAPES as u8)
            .map(|len| Rule {
                name: format!("r{len}"),
                matcher: Match {
                    dst: Some(
                        format!("2001:db8::/{}", 32 + len)
                            .parse::<IpNet>()
                            .unwrap()
                            .trunc(),
                    ),
                    ..Match::default()
                },
                mark: u32::from(len) + 1,
            })
            .collect();
        let c = compile(&rules, u32::MAX, &BTreeMap::new()).unwrap();
        assert_eq!(c.tables[1].len, 1, "one class shape");
        assert_ne!(c.tables[1].dst_root, TRIE_NONE);
        // 2001:db8:: is in every prefix: its class holds all 65 conditions.
        let addr: [u8; 16] = "2001:db8::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let class = c.trie.lookup(c.tables[1].dst_root, &addr);
        assert_eq!(
            c.classes.fields.values().next().unwrap().names[&class].len(),
            65
        );
        let key = RuleKey {
            shape: c.shapes.values().copied().next().unwrap(),
            dst: [class, 0, 0, 0],
            ..RuleKey::default()
        };
        assert_eq!(c.entries[&key].prio, 0, "the first rule wins");
    }

    #[test]
    fn invalid_rules_are_named() {
        let bad = Rule {
            name: "icmp-ports".into(),
            matcher: Match {
                proto: Some(1),
                dport: Some(PortSet::single(1)),
                ..Match::default()
            },
            mark: 1,
        };
        let err = compile(&[bad], u32::MAX, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rule 0 (icmp-ports): protocol icmp has no ports, so a port condition can never match"
        );
    }
}
