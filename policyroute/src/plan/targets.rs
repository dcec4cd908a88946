//! Gateways and groups as the dataplane holds them: each (name, `when_down`) that rules
//! route to gets a target id, and per family a [`TargetState`] that the classifier reads
//! to pick a mark per flow. Health goes in (which gateways are up, per family); the states
//! come out. Pure: the daemon calls it on every health change and writes what differs,
//! which costs the same whatever the number of rules.
use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
};

use policyroute_common::{
    target_key, Member as DpMember, TargetState, BALANCE_SLOTS, MAX_MEMBERS, MEMBER_CHECK_DOWN,
    MEMBER_UP, SLOT_MOVED, TARGET_BLACKHOLE, TARGET_ONE, TARGET_RECORDS,
};
use rustc_hash::FxHasher;

use crate::policy::{matcher::Family, Member, Policy, Target, WhenDown};

pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// The ids of the targets a policy's rules route to, by name, then `when_down` (nested, so
/// [`TargetIds::id`] looks a borrowed name up: compiling calls it once per rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetIds(BTreeMap<String, BTreeMap<WhenDown, u32>>);

impl TargetIds {
    /// Ids come from a hash of (name, `when_down`), so adding or removing one target does
    /// not renumber the others (which would rewrite every rule entry that names them).
    /// Every gateway has one, named by a rule or not: the dataplane's states are where
    /// its health (and the epoch that drops its sticky flows) is kept.
    pub fn of(policy: &Policy) -> Self {
        // Borrowed and hashed while deduplicating: a policy of 100,000 rules names a handful
        // of targets, which are then sorted (ids are probed in name order).
        let wanted: rustc_hash::FxHashSet<(&str, WhenDown)> = policy
            .rules
            .iter()
            .filter_map(|r| match &r.target {
                Target::Gateway(name) => Some((name.as_str(), r.when_down)),
                Target::Mark(_) => None,
            })
            .chain(
                policy
                    .gateways
                    .iter()
                    .map(|g| (g.name.as_str(), WhenDown::Main)),
            )
            .collect();
        let mut wanted: Vec<(&str, WhenDown)> = wanted.into_iter().collect();
        wanted.sort_unstable();
        let mut ids: BTreeMap<String, BTreeMap<WhenDown, u32>> = BTreeMap::new();
        let mut taken = std::collections::BTreeSet::new();
        for (name, when_down) in wanted {
            // Hashed as (String, WhenDown), as ids always were: they must not change.
            let target = (name.to_owned(), when_down);
            // Ids stay below 2^31: the map key is `id << 1 | family`.
            let mut id = (hash_of(&target) as u32 & 0x7fff_ffff).max(1);
            while !taken.insert(id) {
                id = (id % 0x7fff_ffff) + 1;
            }
            ids.entry(target.0).or_default().insert(when_down, id);
        }
        Self(ids)
    }

    pub fn id(&self, name: &str, when_down: WhenDown) -> Option<u32> {
        self.0.get(name)?.get(&when_down).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, WhenDown, u32)> {
        self.0
            .iter()
            .flat_map(|(n, ids)| ids.iter().map(move |(w, id)| (n.as_str(), *w, *id)))
    }

    pub fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// FxHash (deterministic, unlike std's keyed hasher) finished with splitmix64's
/// avalanche: Fx alone leaves related inputs (slot numbers) correlated, which skews the
/// rendezvous shares.
fn hash_of(value: &impl Hash) -> u64 {
    let mut h = FxHasher::default();
    value.hash(&mut h);
    let mut z = h.finish();
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One gateway's health for one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayHealth {
    /// Device up with carrier, and the check (if any) passes.
    pub up: bool,
    /// The check says down (whatever the carrier).
    pub check_down: bool,
    /// Times it went down: flow records of an earlier epoch no longer hold.
    pub epoch: u32,
}

impl Default for GatewayHealth {
    fn default() -> Self {
        Self {
            up: true,
            check_down: false,
            epoch: 0,
        }
    }
}

/// Health by (gateway name, family).
pub type Health = BTreeMap<(String, Family), GatewayHealth>;

/// The members of a target: a group's, or the gateway alone.
pub fn members_of(policy: &Policy, name: &str) -> Vec<Member> {
    match policy.group(name) {
        Some(g) => g.members.clone(),
        None => vec![Member {
            gateway: name.to_owned(),
            weight: 1,
            tier: 1,
        }],
    }
}

/// Every target's state for both families, keyed like the dataplane's map.
/// `previous` (what the dataplane holds) carries when each target became healthy again:
/// its flow records are looked up until they have expired (`record_ttl_ns` later).
pub fn states(
    policy: &Policy,
    ids: &TargetIds,
    health: &Health,
    previous: &BTreeMap<u32, TargetState>,
    now_ns: u64,
    record_ttl_ns: u64,
) -> BTreeMap<u32, TargetState> {
    let mut out = BTreeMap::new();
    for (name, when_down, id) in ids.iter() {
        let members = members_of(policy, name);
        let version = hash_of(&(&members, members_marks(policy, &members))) as u32;
        for family in FAMILIES {
            let key = target_key(id, family.index());
            let mut state = state(policy, &members, family, health, version);
            if when_down == WhenDown::Blackhole {
                state.flags |= TARGET_BLACKHOLE;
            }
            records(&mut state, previous.get(&key), now_ns, record_ttl_ns);
            out.insert(key, state);
        }
    }
    out
}

fn members_marks(policy: &Policy, members: &[Member]) -> Vec<u32> {
    members
        .iter()
        .map(|m| policy.gateway(&m.gateway).map_or(0, |g| g.mark))
        .collect()
}

fn state(
    policy: &Policy,
    members: &[Member],
    family: Family,
    health: &Health,
    version: u32,
) -> TargetState {
    let mut s = TargetState {
        version,
        ..TargetState::default()
    };
    let healths: Vec<GatewayHealth> = members
        .iter()
        .map(|m| {
            health
                .get(&(m.gateway.clone(), family))
                .copied()
                .unwrap_or_default()
        })
        .collect();
    for (i, (m, h)) in members.iter().zip(&healths).enumerate().take(MAX_MEMBERS) {
        s.members[i] = DpMember {
            mark: policy.gateway(&m.gateway).map_or(0, |g| g.mark) & policy.mark_mask,
            epoch: h.epoch,
            flags: u32::from(h.up) * MEMBER_UP + u32::from(h.check_down) * MEMBER_CHECK_DOWN,
            _pad: 0,
        };
    }
    let healthy = tier_members(members, &|_| true);
    let live = tier_members(members, &|i| healths[i].up);
    s.live = live.len() as u32;
    if live.is_empty() {
        return s;
    }
    let ideal = balance(members, &healthy);
    let current = if live == healthy {
        ideal.clone()
    } else {
        balance(members, &live)
    };
    for (slot, (&cur, &best)) in s.slots.iter_mut().zip(current.iter().zip(&ideal)) {
        *slot = cur | if cur == best { 0 } else { SLOT_MOVED };
    }
    if let [only] = live[..] {
        if s.slots.iter().all(|&x| x == only as u8) {
            s.flags |= TARGET_ONE;
            s.one_mark = s.members[only].mark;
        }
    }
    s
}

/// Indexes of the members of the lowest tier that has one for which `up` holds.
fn tier_members(members: &[Member], up: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let live = || (0..members.len().min(MAX_MEMBERS)).filter(|&i| up(i));
    let Some(tier) = live().map(|i| members[i].tier).min() else {
        return Vec::new();
    };
    live().filter(|&i| members[i].tier == tier).collect()
}

/// Weighted rendezvous hashing per slot: each slot goes to the member with the highest
/// `-weight / ln(u)`, u a hash of (slot, member name) in (0, 1). A member's slots do not
/// depend on which other members are present, so taking one away (down, or removed from
/// the policy) moves only its own slots, and adding one takes slots from each in
/// proportion.
fn balance(members: &[Member], among: &[usize]) -> Vec<u8> {
    if let [only] = among {
        return vec![*only as u8; BALANCE_SLOTS];
    }
    (0..BALANCE_SLOTS)
        .map(|slot| {
            let mut best = (f64::NEG_INFINITY, among[0]);
            for &i in among {
                let h = hash_of(&(slot as u32, &members[i].gateway));
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let score = -f64::from(members[i].weight) / u.ln();
                if score > best.0 {
                    best = (score, i);
                }
            }
            best.1 as u8
        })
        .collect()
}

/// Whether flow records matter: they are written while some slot is moved or no member
/// is live, and looked up until the last of them expired after the target was healthy
/// again.
fn records(state: &mut TargetState, previous: Option<&TargetState>, now_ns: u64, ttl_ns: u64) {
    let degraded = state.live == 0 || state.slots.iter().any(|s| s & SLOT_MOVED != 0);
    let was = previous.filter(|p| p.flags & TARGET_RECORDS != 0);
    let (records, since) = match (degraded, was) {
        (true, _) => (true, 0),
        (false, None) => (false, 0),
        (false, Some(p)) if p.healthy_since_ns == 0 => (true, now_ns),
        (false, Some(p)) => (
            now_ns.saturating_sub(p.healthy_since_ns) < ttl_ns,
            p.healthy_since_ns,
        ),
    };
    if records {
        state.flags |= TARGET_RECORDS;
        state.healthy_since_ns = since;
    }
}

/// The health of every gateway for both families: its device up with carrier (`carrier`)
/// and its check passing (`check`: the daemon's verdict; `None` keeps what the dataplane
/// holds, `previous`). The epoch grows when a gateway goes down.
pub fn health(
    policy: &Policy,
    carrier: &dyn Fn(&str) -> bool,
    check: &dyn Fn(&str, Family) -> Option<bool>,
    previous: &Health,
) -> Health {
    let mut out = Health::new();
    for g in &policy.gateways {
        for family in FAMILIES {
            let key = (g.name.clone(), family);
            let before = previous.get(&key).copied();
            let checked = g
                .check
                .as_ref()
                .is_some_and(|c| c.targets_of(family).next().is_some());
            let check_down = checked
                && match check(&g.name, family) {
                    Some(up) => !up,
                    None => before.is_some_and(|b| b.check_down),
                };
            let up = carrier(&g.dev) && !check_down;
            let epoch = match before {
                Some(b) if b.up && !up => b.epoch.wrapping_add(1),
                Some(b) => b.epoch,
                None => 0,
            };
            out.insert(
                key,
                GatewayHealth {
                    up,
                    check_down,
                    epoch,
                },
            );
        }
    }
    out
}

/// The gateways that went down between `before` and `after`, as (mark, family index):
/// their sticky flow records are dropped.
pub fn gone_down(policy: &Policy, before: &Health, after: &Health) -> Vec<(u32, u8)> {
    after
        .iter()
        .filter(|(k, h)| !h.up && before.get(*k).is_some_and(|b| b.up))
        .filter_map(|((name, family), _)| {
            let mark = policy.gateway(name)?.mark & policy.mark_mask;
            Some((mark, family.index() as u8))
        })
        .collect()
}

/// The health a dataplane's states record, by gateway (found by mark).
pub fn health_in(policy: &Policy, states: &BTreeMap<u32, TargetState>) -> Health {
    let mut out = Health::new();
    for (&key, s) in states {
        let family = if key & 1 == policyroute_common::FAMILY_V6 {
            Family::V6
        } else {
            Family::V4
        };
        for m in &s.members {
            let Some(g) = policy
                .gateways
                .iter()
                .find(|g| g.mark == m.mark && m.mark != 0)
            else {
                continue;
            };
            out.entry((g.name.clone(), family))
                .or_insert(GatewayHealth {
                    up: m.flags & MEMBER_UP != 0,
                    check_down: m.flags & MEMBER_CHECK_DOWN != 0,
                    epoch: m.epoch,
                });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rt_tables::RtTables;

    const POLICY: &str = r#"
[[gateway]]
name = "isp1"
dev = "wan1"
table = 101
[[gateway]]
name = "isp2"
dev = "wan2"
table = 102
[[gateway]]
name = "lte"
dev = "wan3"
table = 103
[[group]]
name = "wan"
members = [ { gateway = "isp1", weight = 3 }, { gateway = "isp2", weight = 1 }, { gateway = "lte", tier = 2 } ]
[[rule]]
dport = 80
proto = "tcp"
gateway = "wan"
[[rule]]
dport = 443
proto = "tcp"
gateway = "isp2"
when_down = "blackhole"
"#;

    fn policy() -> Policy {
        Policy::parse(POLICY, "p.toml", &RtTables::builtin()).unwrap()
    }

    fn down(names: &[&str]) -> Health {
        let mut h = Health::new();
        for n in names {
            for f in FAMILIES {
                h.insert(
                    (n.to_string(), f),
                    GatewayHealth {
                        up: false,
                        check_down: true,
                        epoch: 1,
                    },
                );
            }
        }
        h
    }

    fn wan(health: &Health) -> TargetState {
        let p = policy();
        let ids = TargetIds::of(&p);
        let id = ids.id("wan", WhenDown::Main).unwrap();
        states(&p, &ids, health, &BTreeMap::new(), 0, 1)[&target_key(id, 0)]
    }

    fn share(s: &TargetState, member: u8) -> f64 {
        let n = s
            .slots
            .iter()
            .filter(|&&x| x & !SLOT_MOVED == member)
            .count();
        n as f64 / BALANCE_SLOTS as f64
    }

    #[test]
    fn weights_share_the_slots_of_the_lowest_tier() {
        let s = wan(&Health::new());
        assert_eq!(s.live, 2);
        assert!((share(&s, 0) - 0.75).abs() < 0.02, "{}", share(&s, 0));
        assert_eq!(share(&s, 2), 0.0, "tier 2 idle while tier 1 lives");
        assert_eq!(s.flags & TARGET_RECORDS, 0, "healthy: no flow records");
    }

    #[test]
    fn a_member_going_down_gives_up_only_its_own_slots() {
        let healthy = wan(&Health::new());
        let degraded = wan(&down(&["isp2"]));
        for (a, b) in healthy.slots.iter().zip(&degraded.slots) {
            if *a == 0 {
                assert_eq!(*b, 0, "an isp1 slot stays isp1 and is not moved");
            } else {
                assert_eq!(*b, SLOT_MOVED, "isp2's slots go to isp1, marked moved");
            }
        }
        assert_ne!(degraded.flags & TARGET_RECORDS, 0);
    }

    #[test]
    fn more_targets_than_the_map_holds_is_an_error() {
        let mut text = String::new();
        for i in 0..=policyroute_common::MAX_TARGETS {
            text.push_str(&format!(
                "[[gateway]]\nname = \"g{i}\"\ndev = \"wan{}\"\ntable = {}\n",
                i % 4,
                1000 + i
            ));
        }
        let p = Policy::parse(&text, "p.toml", &RtTables::builtin()).unwrap();
        let ids = TargetIds::of(&p);
        let err = crate::plan::compile::compile_policy(&p, &[], &BTreeMap::new(), &ids);
        assert!(
            matches!(
                err,
                Err(crate::plan::compile::CompileError::TooManyTargets { count: 257 })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn one_unmoved_member_needs_no_hash() {
        let p = policy();
        let ids = TargetIds::of(&p);
        let all = states(&p, &ids, &Health::new(), &BTreeMap::new(), 0, 1);
        let isp2 = all[&target_key(ids.id("isp2", WhenDown::Blackhole).unwrap(), 0)];
        assert_eq!(
            (isp2.flags & TARGET_ONE, isp2.one_mark),
            (TARGET_ONE, isp2.members[0].mark)
        );
        assert_eq!(
            wan(&Health::new()).flags & TARGET_ONE,
            0,
            "two live members"
        );
        let tier2 = wan(&down(&["isp1", "isp2"]));
        assert_eq!(
            tier2.flags & TARGET_ONE,
            0,
            "a stand-in: flows are recorded"
        );
    }

    #[test]
    fn the_next_tier_takes_over_and_nothing_live_means_when_down() {
        let s = wan(&down(&["isp1", "isp2"]));
        assert_eq!(s.live, 1);
        assert!(s.slots.iter().all(|&x| x == 2 | SLOT_MOVED));
        let none = wan(&down(&["isp1", "isp2", "lte"]));
        assert_eq!(none.live, 0);
        let p = policy();
        let ids = TargetIds::of(&p);
        let id = ids.id("isp2", WhenDown::Blackhole).unwrap();
        let s = states(&p, &ids, &down(&["isp2"]), &BTreeMap::new(), 0, 1);
        let isp2 = s[&target_key(id, 1)];
        assert_eq!(
            (isp2.live, isp2.flags & TARGET_BLACKHOLE),
            (0, TARGET_BLACKHOLE)
        );
    }

    #[test]
    fn records_are_looked_up_until_they_expire_after_recovery() {
        let p = policy();
        let ids = TargetIds::of(&p);
        let id = ids.id("wan", WhenDown::Main).unwrap();
        let key = target_key(id, 0);
        let degraded = states(&p, &ids, &down(&["isp2"]), &BTreeMap::new(), 100, 50);
        let back = states(&p, &ids, &Health::new(), &degraded, 200, 50);
        assert_eq!(back[&key].flags & TARGET_RECORDS, TARGET_RECORDS);
        assert_eq!(back[&key].healthy_since_ns, 200);
        let later = states(&p, &ids, &Health::new(), &back, 260, 50);
        assert_eq!(later[&key].flags & TARGET_RECORDS, 0);
    }

    #[test]
    fn removing_a_member_moves_only_its_slots() {
        let before = wan(&Health::new());
        let text = POLICY.replace(", { gateway = \"isp2\", weight = 1 }", "");
        let p = Policy::parse(&text, "p.toml", &RtTables::builtin()).unwrap();
        let ids = TargetIds::of(&p);
        let id = ids.id("wan", WhenDown::Main).unwrap();
        let after = states(&p, &ids, &Health::new(), &BTreeMap::new(), 0, 1)[&target_key(id, 0)];
        for (a, b) in before.slots.iter().zip(&after.slots) {
            if *a == 0 {
                assert_eq!(*b, 0);
            }
        }
        assert_ne!(before.version, after.version);
    }

    #[test]
    fn health_combines_carrier_and_check_and_counts_epochs() {
        let mut p = policy();
        p.gateways[1].check = Some(crate::policy::Check {
            targets: vec!["198.18.0.53".parse().unwrap()],
            method: crate::policy::CheckMethod::Icmp,
            interval_ms: 500,
            timeout_ms: 1000,
            count: 3,
            down: 3,
            up: 3,
        });
        let all_up = health(&p, &|_| true, &|_, _| None, &Health::new());
        let key = ("isp2".to_string(), Family::V4);
        assert!(all_up[&key].up);
        let failed = health(&p, &|_| true, &|_, _| Some(false), &all_up);
        assert_eq!((failed[&key].up, failed[&key].epoch), (false, 1));
        let v6 = ("isp2".to_string(), Family::V6);
        assert!(failed[&v6].up, "no IPv6 target: IPv6 follows carrier only");
        let kept = health(&p, &|_| true, &|_, _| None, &failed);
        assert!(!kept[&key].up, "without a verdict the last one holds");
        let no_carrier = health(&p, &|d| d != "wan1", &|_, _| None, &all_up);
        assert!(!no_carrier[&("isp1".to_string(), Family::V4)].up);
    }
}
