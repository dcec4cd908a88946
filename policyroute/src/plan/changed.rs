//! Which classifier entries a re-apply can change. When the maps still hold what the
//! previous record describes (its epoch is the live one) and the edit left every other rule
//! where it was, only the entries of the edited rules can differ: their old keys and their
//! new ones. The executor then looks those up instead of reading the whole map, so a
//! one-rule change costs a handful of lookups, not a dump of every entry.
use policyroute_common::{RuleKey, SHAPE_DST_CLASS, SHAPE_SRC_CLASS};
use rustc_hash::FxHashSet;

use super::{compile::keys_of, record::Record, DataplaneStep, Observed, Plan};

/// The keys to look at, or `None`: then every entry is compared.
pub fn entries_to_check(
    previous: &Record,
    plan: &Plan,
    observed: &Observed,
) -> Option<Vec<RuleKey>> {
    let dp = observed.dataplane.as_ref()?;
    let kept = matches!(plan.dataplane, DataplaneStep::Reuse { id, .. } if id == dp.id);
    if !kept || previous.epoch != Some(dp.epoch) {
        return None;
    }
    // A list file may change under an unchanged policy text, and class ids depend on the
    // whole policy (the live entries' too): every entry is compared.
    let class_shapes = dp
        .shapes
        .keys()
        .any(|d| d.flags & (SHAPE_SRC_CLASS | SHAPE_DST_CLASS) != 0);
    if class_shapes || !previous.policy.sets.is_empty() || plan.compiled.uses_classes() {
        return None;
    }
    let (old, new) = (previous.digests.as_ref()?, plan.record.digests.as_ref()?);
    let count = new.rules.len();
    // The same head: the same mark mask and gateway marks for every rule.
    let lengths = [
        old.rules.len(),
        previous.slots.len(),
        previous.policy.rules.len(),
    ];
    if old.head != new.head || lengths.iter().any(|&n| n != count) {
        return None;
    }
    let changed: Vec<bool> = (0..count).map(|i| old.rules[i] != new.rules[i]).collect();
    // A rule that stayed keeps its entries only if it also kept its counter slot.
    let slots_kept = (0..count).all(|i| changed[i] || previous.slots[i] == plan.record.slots[i]);
    if !slots_kept {
        return None;
    }
    let old_rules = (0..count)
        .filter(|&i| changed[i])
        .map(|i| &previous.policy.rules[i].matcher);
    let mut keys: FxHashSet<RuleKey> = keys_of(old_rules, &dp.shapes)?.into_iter().collect();
    keys.extend(
        plan.compiled
            .entries
            .iter()
            .filter(|(_, v)| changed.get(v.prio as usize).copied().unwrap_or(true))
            .map(|(k, _)| *k),
    );
    Some(keys.into_iter().collect())
}
