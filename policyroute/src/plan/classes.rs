//! Address classes: how prefix lists of any size and any mix of lengths cost the classifier
//! one trie walk per address field instead of one hash lookup per prefix length.
//!
//! Each address condition that goes through a trie (a set, or a literal prefix of a field
//! with many distinct lengths) is a *condition*. An address's class is the set of
//! conditions holding it: the trie maps every prefix to the class of its own conditions
//! and those of the prefixes enclosing it, and the longest prefix holding an address
//! therefore gives the address's class. Rules are then entries keyed by class, one per
//! class that holds their condition, and tuple space search does the rest (first match
//! across rules, the other fields).
//!
//! Class ids are a hash of the class's condition names, so they stay the same across
//! applies that leave a class's conditions alone and an edit rewrites only what it touches.
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;

use ipnet::IpNet;
use policyroute_common::TRIE_INDEX;
use rustc_hash::FxHashMap;

use super::prefix_trie::Prefix;
use crate::policy::{
    matcher::{Family, Match},
    sets::SetRef,
};

/// A field whose literal prefixes come in at least this many lengths goes through a trie:
/// a trie walk (at most 3 array reads for IPv4) is cheaper than that many hash lookups.
pub const TRIE_FROM_LENGTHS: usize = 3;

/// Source or destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Src,
    Dst,
}

/// The classes of one address field of one family.
#[derive(Clone, Debug, Default)]
pub struct FieldClasses {
    /// Condition name (`@set` or a prefix) -> the classes that hold it.
    pub of_condition: FxHashMap<String, Vec<u32>>,
    /// Every prefix with its class, for the trie.
    pub prefixes: Vec<Prefix>,
    /// Class id -> its condition names (for `explain` and tests).
    pub names: BTreeMap<u32, Vec<String>>,
}

/// Which fields go through tries, and their classes, by (family, field).
#[derive(Clone, Debug, Default)]
pub struct Classes {
    pub fields: BTreeMap<(Family, Field), FieldClasses>,
    /// (family, field) pairs whose literal prefixes go through the trie too.
    literal: BTreeSet<(Family, Field)>,
}

impl Classes {
    /// The classes of `rules`' address conditions.
    pub fn of<'a>(rules: impl Iterator<Item = &'a Match> + Clone) -> Self {
        let literal = literal_fields(rules.clone());
        let mut conditions: BTreeMap<(Family, Field), BTreeMap<String, Vec<IpNet>>> =
            BTreeMap::new();
        for m in rules {
            for field in [Field::Src, Field::Dst] {
                for family in [Family::V4, Family::V6] {
                    let Some(name) = condition_name(m, field, family, &literal) else {
                        continue;
                    };
                    // A set shared by many rules: its prefixes are gathered once. A set
                    // without prefixes of this family makes no condition (nor a trie).
                    let conds = conditions.entry((family, field)).or_default();
                    if let std::collections::btree_map::Entry::Vacant(slot) = conds.entry(name) {
                        let prefixes = condition_prefixes(m, field, family);
                        if !prefixes.is_empty() {
                            slot.insert(prefixes);
                        }
                    }
                }
            }
        }
        let fields = conditions
            .into_iter()
            .filter(|(_, conds)| !conds.is_empty())
            .map(|(at, conds)| (at, classify(&conds)))
            .collect();
        Self { fields, literal }
    }

    /// The condition of `m`'s `field` in `family` if it goes through a trie.
    pub fn condition_of(&self, m: &Match, family: Family, field: Field) -> Option<&[u32]> {
        let fc = self.fields.get(&(family, field))?;
        let name = condition_name(m, field, family, &self.literal)?;
        fc.of_condition.get(&name).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Fields (by family) whose literal prefixes come in [`TRIE_FROM_LENGTHS`] lengths or more.
fn literal_fields<'a>(rules: impl Iterator<Item = &'a Match>) -> BTreeSet<(Family, Field)> {
    // A flag per (family, field, length): this runs over every rule of every apply, and
    // tree inserts per rule cost a 100,000-rule apply about 10 ms.
    let mut seen = [[[false; 129]; 2]; 2];
    for m in rules {
        for (field, net) in [(Field::Src, &m.src), (Field::Dst, &m.dst)] {
            if let Some(n) = net.filter(|n| n.prefix_len() > 0) {
                let family = Family::of_net(&n).index() as usize;
                seen[family][field as usize][usize::from(n.prefix_len())] = true;
            }
        }
    }
    let mut out = BTreeSet::new();
    for family in [Family::V4, Family::V6] {
        for field in [Field::Src, Field::Dst] {
            let lengths = seen[family.index() as usize][field as usize];
            if lengths.iter().filter(|&&l| l).count() >= TRIE_FROM_LENGTHS {
                out.insert((family, field));
            }
        }
    }
    out
}

/// The name of `m`'s condition on `field` for `family` when it goes through a trie: `@set`
/// (a set with prefixes of that family), or a literal prefix of a field with many lengths.
fn condition_name(
    m: &Match,
    field: Field,
    family: Family,
    literal: &BTreeSet<(Family, Field)>,
) -> Option<String> {
    let (net, set) = field_of(m, field);
    if let Some(s) = set {
        return Some(format!("@{}", s.name));
    }
    let n = net.filter(|n| n.prefix_len() > 0 && Family::of_net(n) == family)?;
    literal.contains(&(family, field)).then(|| n.to_string())
}

/// `m`'s prefix and set condition on `field`.
fn field_of(m: &Match, field: Field) -> (&Option<IpNet>, &Option<SetRef>) {
    match field {
        Field::Src => (&m.src, &m.src_set),
        Field::Dst => (&m.dst, &m.dst_set),
    }
}

/// The prefixes of `family` of the condition [`condition_name`] names.
fn condition_prefixes(m: &Match, field: Field, family: Family) -> Vec<IpNet> {
    let (net, set) = field_of(m, field);
    match set {
        Some(s) => s
            .set
            .prefixes
            .iter()
            .filter(|p| Family::of_net(p) == family)
            .copied()
            .collect(),
        None => net.iter().copied().collect(),
    }
}

/// Classes of one field: every prefix gets the conditions of itself and of the prefixes
/// that enclose it.
fn classify(conditions: &BTreeMap<String, Vec<IpNet>>) -> FieldClasses {
    let names: Vec<&String> = conditions.keys().collect();
    let mut by_prefix: BTreeMap<IpNet, BTreeSet<usize>> = BTreeMap::new();
    for (i, prefixes) in conditions.values().enumerate() {
        for p in prefixes {
            by_prefix.entry(*p).or_default().insert(i);
        }
    }
    let mut out = FieldClasses::default();
    let mut ids: BTreeMap<BTreeSet<usize>, u32> = BTreeMap::new();
    // In address order an enclosing prefix comes before what it holds: a stack of the
    // enclosing prefixes (with their cumulative conditions) follows the nesting.
    let mut stack: Vec<(IpNet, BTreeSet<usize>)> = Vec::new();
    for (prefix, own) in &by_prefix {
        while stack.last().is_some_and(|(p, _)| !p.contains(prefix)) {
            stack.pop();
        }
        let mut all = stack.last().map(|(_, c)| c.clone()).unwrap_or_default();
        let enclosing = all.len();
        all.extend(own);
        // Nothing new (a list holding a prefix and also a shorter one around it, as
        // downloaded lists and the unions of several lists often do): the enclosing prefix
        // already gives every address here this class, so the prefix costs no trie memory.
        // What it encloses takes its classes from the enclosing one, which are the same.
        if enclosing > 0 && all.len() == enclosing {
            continue;
        }
        let class = match ids.get(&all) {
            Some(&id) => id,
            None => {
                let id = class_id(&all, &names, &out.names);
                ids.insert(all.clone(), id);
                let cond_names: Vec<String> = all.iter().map(|&i| names[i].clone()).collect();
                for n in &cond_names {
                    out.of_condition.entry(n.clone()).or_default().push(id);
                }
                out.names.insert(id, cond_names);
                id
            }
        };
        out.prefixes.push(trie_prefix(prefix, class));
        stack.push((*prefix, all));
    }
    out
}

/// A stable id for a class: a hash of its condition names, probed past ids taken.
fn class_id(conds: &BTreeSet<usize>, names: &[&String], taken: &BTreeMap<u32, Vec<String>>) -> u32 {
    let mut h = std::hash::DefaultHasher::new();
    for &i in conds {
        h.write(names[i].as_bytes());
        h.write_u8(0);
    }
    // Classes share trie words with node and leaf pointers: below 2^30.
    let mut id = (h.finish() as u32) & TRIE_INDEX;
    while id == 0 || taken.contains_key(&id) {
        id = id.wrapping_add(1) & TRIE_INDEX;
    }
    id
}

fn trie_prefix(net: &IpNet, class: u32) -> Prefix {
    let mut addr = [0u8; 16];
    match net {
        IpNet::V4(n) => addr[..4].copy_from_slice(&n.network().octets()),
        IpNet::V6(n) => addr.copy_from_slice(&n.network().octets()),
    }
    Prefix {
        addr,
        len: net.prefix_len(),
        class,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::sets::{PrefixSet, SetRef};

    fn with_dst_set(set: &Arc<PrefixSet>) -> Match {
        Match {
            dst_set: Some(SetRef::new(Arc::clone(set))),
            ..Match::default()
        }
    }

    #[test]
    fn a_set_of_one_family_makes_no_trie_for_the_other() {
        let set = Arc::new(PrefixSet::new(
            "v4".into(),
            None,
            vec!["192.0.2.0/24".parse().unwrap()],
        ));
        let c = Classes::of([with_dst_set(&set)].iter());
        assert_eq!(
            c.fields.keys().copied().collect::<Vec<_>>(),
            vec![(Family::V4, Field::Dst)]
        );
    }

    #[test]
    fn a_prefix_inside_a_shorter_one_of_the_same_class_takes_no_trie_entry() {
        let list = Arc::new(PrefixSet::new(
            "list".into(),
            None,
            [
                "198.18.0.0/15",
                "198.18.4.0/24",
                "198.18.4.128/25",
                "203.0.113.0/24",
            ]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
        ));
        let other = Arc::new(PrefixSet::new(
            "other".into(),
            None,
            vec!["198.18.4.0/26".parse().unwrap()],
        ));
        let c = Classes::of([with_dst_set(&list), with_dst_set(&other)].iter());
        let fc = &c.fields[&(Family::V4, Field::Dst)];
        let kept: Vec<u8> = fc.prefixes.iter().map(|p| p.len).collect();
        // The /24 and /25 add nothing to the /15; the /26 adds `other`.
        assert_eq!(kept, vec![15, 26, 24]);
        assert_eq!(fc.names.len(), 2);
    }

    #[test]
    fn nested_conditions_make_classes_of_their_union() {
        let wide = Arc::new(PrefixSet::new(
            "wide".into(),
            None,
            vec!["198.18.0.0/15".parse().unwrap()],
        ));
        let narrow = Arc::new(PrefixSet::new(
            "narrow".into(),
            None,
            vec![
                "198.18.4.0/24".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ],
        ));
        let rules = [with_dst_set(&wide), with_dst_set(&narrow)];
        let c = Classes::of(rules.iter());
        let fc = &c.fields[&(Family::V4, Field::Dst)];
        // {wide}, {narrow} and {wide, narrow}: narrow's /24 inside wide is both.
        assert_eq!(fc.names.len(), 3);
        assert_eq!(fc.of_condition["@wide"].len(), 2);
        assert_eq!(fc.of_condition["@narrow"].len(), 2);
        assert!(fc.names.values().any(|n| n.len() == 2));
    }
}
