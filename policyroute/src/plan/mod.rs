//! Stage 3 of the pipeline: the plan. [`plan`] is a pure function of the policy, what the
//! namespace holds now ([`Observed`]) and the record of the last apply: it compiles the
//! classifier, gives rules their counter slots, and lists every kernel change an apply
//! makes. No syscalls: `control::apply` observes before and executes after.
pub mod changed;
pub mod classes;
pub mod compile;
pub mod desired;
pub mod fast_path;
pub mod foreign;
pub mod ip_text;
pub mod objects;
pub mod prefix_trie;
pub mod record;
pub mod slots;
pub mod targets;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use policyroute_common::{
    TargetState, DEFAULT_MAX_COUNTERS, DEFAULT_MAX_ENTRIES, DEFAULT_TRIE_NODES, TRIE_DISABLED_NODES,
};
use serde::Serialize;

use compile::{compile_policy, CompileError, Compiled, ShapeDesc};
use desired::Desired;
use foreign::{Foreign, ForeignRoute, ForeignRule};
use objects::{Diff, Frames, Hook, IpRoute, IpRule, KernelPrefix, TcPath};
use record::Record;

use crate::policy::{matcher::Family, AttachMode, ConfigError, Policy};
use targets::{Health, TargetIds};

/// What the namespace holds now, as far as a plan depends on it.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Interface index by name.
    pub links: BTreeMap<String, u32>,
    /// Devices that exist but are down or have no carrier.
    pub down: BTreeSet<String>,
    /// What frames start with on devices without an Ethernet header (absent: Ethernet).
    pub frames: BTreeMap<String, Frames>,
    /// Routable (not link-local) addresses of devices, by name; at least those of the
    /// policy's gateway devices.
    pub addresses: BTreeMap<String, Vec<IpAddr>>,
    /// ip rules and routes carrying policyroute's routing protocol.
    pub ip_rules: BTreeSet<IpRule>,
    pub routes: BTreeSet<IpRoute>,
    /// Routes of the tables asked for (a policy's gateway tables) that are not ours.
    pub foreign_routes: Vec<ForeignRoute>,
    /// ip rules with a fwmark that are not ours.
    pub foreign_rules: Vec<ForeignRule>,
    /// Destinations of the local table and routes of the main table, which the fast
    /// path leaves to the kernel.
    pub kernel_prefixes: BTreeSet<KernelPrefix>,
    /// Our programs found on hooks.
    pub attachments: Vec<Attachment>,
    /// The dataplane in use (the one whose programs hold the most hooks), if any.
    pub dataplane: Option<ObservedDataplane>,
    /// The namespace's cookie: socket hooks act only on sockets that carry it.
    pub netns_cookie: u64,
    /// Whether the kernel has tcx (Linux 6.6+); without it TC programs attach through
    /// clsact filters.
    pub tcx: bool,
    /// The gateway and group states the dataplane holds, by map key.
    pub targets: BTreeMap<u32, TargetState>,
    /// Health check verdicts (up?) by gateway and family, from a running daemon; a
    /// checked gateway missing here keeps the verdict the dataplane holds.
    pub checks: BTreeMap<(String, Family), bool>,
    /// CLOCK_MONOTONIC now, ns (the clock of flow records).
    pub now_ns: u64,
}

/// One of our programs on a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub hook: Hook,
    pub program_id: u32,
    /// The rules map id of the dataplane the program belongs to.
    pub dataplane: u32,
}

impl Attachment {
    /// `HOOK (program ID)`, as reports show it.
    pub fn describe(&self) -> String {
        format!("{} (program {})", self.hook.describe(), self.program_id)
    }
}

/// The dataplane in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDataplane {
    /// Its rules map id: every program of one dataplane shares that map.
    pub id: u32,
    pub capacity: Capacity,
    /// Shape ids of its live tables (kept stable, so unchanged entries keep their keys).
    pub shapes: BTreeMap<ShapeDesc, u16>,
    /// Its `Control::epoch`.
    pub epoch: u32,
}

/// Map capacities of a dataplane, chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Hash entries (a rule takes one per family and port block combination).
    pub entries: u32,
    /// Rules with a counter (per-CPU memory: 16 bytes per rule per possible CPU).
    pub rules: u32,
    /// Nodes (64 bytes) of the prefix trie map: two halves, the live image and the next one.
    pub trie_nodes: u32,
}

impl Default for Capacity {
    /// The sizes compiled into the object (what tests load).
    fn default() -> Self {
        Self {
            entries: DEFAULT_MAX_ENTRIES,
            rules: DEFAULT_MAX_COUNTERS,
            trie_nodes: DEFAULT_TRIE_NODES,
        }
    }
}

impl Capacity {
    /// Maps sized to the policy with room to double: a hash map's bucket array is
    /// allocated (and walked by every dump) in full, so a 4M-entry default would cost every
    /// apply a quarter second. A policy that outgrows them gets a new, larger dataplane.
    pub fn for_policy(compiled: &Compiled) -> Self {
        let grow = |n: usize, min: u32| (n as u32).saturating_mul(2).next_power_of_two().max(min);
        Self {
            entries: grow(compiled.entries.len(), 1 << 14),
            rules: grow(compiled.counter_slots, 1 << 12),
            // Preallocated (an array). A policy without tries gets programs without trie
            // code (they load faster) and a one-node map; one with tries gets room for its
            // image twice (the live one and the next).
            trie_nodes: match compiled.trie.nodes() {
                0 => TRIE_DISABLED_NODES,
                n => grow(n, 2),
            },
        }
    }

    pub fn holds(&self, compiled: &Compiled) -> bool {
        compiled.counter_slots <= self.rules as usize
            && compiled.entries.len() <= self.entries as usize
            && compiled.trie.nodes() <= (self.trie_nodes / 2) as usize
    }
}

/// What happens to the dataplane (programs and maps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataplaneStep {
    /// No hook is wanted: nothing is loaded and every attachment goes.
    Unused,
    /// Keep the dataplane with this rules map id and update its maps in place.
    /// `new_programs`: hooks must be added, so its programs are loaded once more, sharing
    /// its maps (counters, rules and flows stay).
    Reuse { id: u32, new_programs: bool },
    /// Load new programs and maps of this size.
    Load(Capacity),
}

/// What a plan does about a device the policy names that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Devices {
    /// Refuse the policy: a one-shot `apply` most likely has a typo.
    Required,
    /// Leave out what needs the device until it appears, and say so (`run`, and `status`
    /// judging drift).
    Awaited,
}

/// A device the policy names whose part of the plan waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub dev: String,
    /// `missing` (no such device: its routes, hooks and roles wait) or `down` (down or
    /// without carrier: its routes wait).
    pub reason: &'static str,
}

/// Everything an apply changes, decided before anything changes.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What the dataplane's state map will hold afterwards.
    pub record: Record,
    pub compiled: Compiled,
    /// Counter slots new to a rule: zeroed before the rule can count into them.
    pub slots_to_zero: Vec<u32>,
    pub desired: Desired,
    pub ip_rules: Diff<IpRule>,
    pub routes: Diff<IpRoute>,
    /// Routes and ip rules of others in the policy's way: the caller refuses, takes them
    /// over or reports them (nothing in the diffs above touches them).
    pub foreign: Foreign,
    pub dataplane: DataplaneStep,
    pub attach: Vec<Hook>,
    /// Indexes into [`Observed::attachments`].
    pub detach: Vec<usize>,
    /// `Control::sticky_ttl_ns`.
    pub sticky_ttl_ns: u64,
    /// Every gateway's health, and the state of every target rules route to.
    pub health: Health,
    pub ids: TargetIds,
    pub targets: BTreeMap<u32, TargetState>,
    /// Gateways that went down since the dataplane's states were written, as (mark,
    /// family index): their sticky flow records go.
    pub gone_down: Vec<(u32, u8)>,
    /// `Control::netns_cookie`: the socket hooks act only on this namespace's sockets.
    pub netns_cookie: u64,
    /// The cgroups the socket hooks go to (where later commands look for them).
    pub cgroups: Vec<String>,
    /// Devices whose part waits for them.
    pub waiting: Vec<Waiting>,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The policy names something the namespace lacks (a device).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Compile(#[from] CompileError),
}

/// The plan that makes the kernel hold `policy` (read from `source`), given what it holds
/// now and the record of the last apply (`previous`, for counter slots). The policy moves
/// into the plan's record.
pub fn plan(
    policy: Policy,
    source: &str,
    observed: &Observed,
    previous: Option<&Record>,
    devices: Devices,
) -> Result<Plan, PlanError> {
    if devices == Devices::Required {
        policy.check_devices(|dev| observed.links.contains_key(dev))?;
    }
    check_frames(&policy, &observed.frames)?;
    check_hooked(&policy)?;
    let system = desired::System {
        index_of: &observed.links,
        addresses: &observed.addresses,
        down: &observed.down,
        kernel_prefixes: &observed.kernel_prefixes,
        tc_path: tc_path(&policy, observed.tcx)?,
        frames: &observed.frames,
    };
    let shared = shared_uplinks(&policy, &system)?;
    let desired = desired::desired(&policy, &system);
    let waiting = waiting(&policy, observed);
    let mut warnings = down_warnings(&waiting);
    warnings.extend(shared);
    warnings.extend(fast_path::warnings(&policy, &observed.frames));
    let slots = slots::assign(&policy, previous);
    let shapes = observed
        .dataplane
        .as_ref()
        .map(|dp| dp.shapes.clone())
        .unwrap_or_default();
    let ids = TargetIds::of(&policy);
    let compiled = compile_policy(&policy, &slots.slots, &shapes, &ids)?;
    let dataplane = dataplane_step(observed, &desired, &compiled, &mut warnings);
    let (dataplane, attach, detach) = hooks(dataplane, observed, &desired);
    let sticky_ttl_ns = u64::from(policy.sticky_timeout) * 1_000_000_000;
    let before = targets::health_in(&policy, &observed.targets);
    let health = health(&policy, observed, &before);
    let gone_down = targets::gone_down(&policy, &before, &health);
    let targets = targets::states(
        &policy,
        &ids,
        &health,
        &observed.targets,
        observed.now_ns,
        sticky_ttl_ns,
    );
    let foreign = foreign::in_the_way(&policy, &observed.foreign_routes, &observed.foreign_rules);
    Ok(Plan {
        health,
        ids,
        targets,
        gone_down,
        record: Record::new(source.to_string(), policy, slots.slots),
        slots_to_zero: slots.to_zero,
        ip_rules: Diff::between(&observed.ip_rules, &desired.rules),
        routes: Diff::between(&observed.routes, &desired.routes),
        foreign,
        sticky_ttl_ns,
        netns_cookie: observed.netns_cookie,
        cgroups: cgroups(&desired.hooks),
        compiled,
        desired,
        dataplane,
        attach,
        detach,
        warnings,
        waiting,
    })
}

/// How TC programs attach: `[attach] mode`, with `auto` choosing tcx where the kernel has
/// it. Forcing tcx on a kernel without it is an error naming the key.
pub fn tc_path(policy: &Policy, tcx: bool) -> Result<TcPath, ConfigError> {
    match (policy.attach.mode, tcx) {
        (AttachMode::Tc, _) | (AttachMode::Auto, false) => Ok(TcPath::Classic),
        (AttachMode::Auto | AttachMode::Tcx, true) => Ok(TcPath::Tcx),
        (AttachMode::Tcx, false) => Err(ConfigError::Invalid {
            file: policy.origin.file.clone(),
            line: policy.origin.attach_mode.unwrap_or(0),
            key: "attach.mode".into(),
            message: "tcx needs Linux 6.6 or newer and this kernel has none (\"auto\" or \"tc\" \
                      attach through the clsact qdisc)"
                .into(),
        }),
    }
}

/// Gateway health from what is observed: carrier from the links, check verdicts from the
/// daemon or else the dataplane.
/// `before`: the health the dataplane's states hold.
pub fn health(policy: &Policy, observed: &Observed, before: &Health) -> Health {
    let carrier = |dev: &str| observed.links.contains_key(dev) && !observed.down.contains(dev);
    let check = |name: &str, family| observed.checks.get(&(name.to_owned(), family)).copied();
    targets::health(policy, &carrier, &check, before)
}

/// Refuses a policy that routes through gateways but attaches no program: nothing would
/// mark traffic for them, and the record of what apply installed lives in the programs'
/// maps, so later commands would find its rules and routes and take them for leftovers.
pub fn check_hooked(policy: &Policy) -> Result<(), PlanError> {
    let hooked = !policy.attach.ingress.is_empty()
        || !policy.attach.egress.is_empty()
        || policy.attach.local
        || policy.gateways.iter().any(|g| g.sticky);
    let Some(first) = policy.gateways.first().filter(|_| !hooked) else {
        return Ok(());
    };
    Err(PlanError::Config(ConfigError::Invalid {
        file: policy.origin.file.clone(),
        line: policy.origin.gateway_dev.first().copied().unwrap_or(0),
        key: "attach".into(),
        message: format!(
            "gateway {} would get a table and fwmark rules, but [attach] names no device and \
             local is off: nothing would mark traffic for it, and policyroute keeps the record \
             of what it installs with its programs; name a device in [attach] ingress (or \
             egress), or set [attach] local = true",
            first.name
        ),
    }))
}

/// Refuses a program on a device whose frames the classifier cannot read (neither an
/// Ethernet nor an IP header first), naming the device and its link type.
fn check_frames(policy: &Policy, frames: &BTreeMap<String, Frames>) -> Result<(), PlanError> {
    policy.check_each_device(|dev, hooked| match frames.get(dev) {
        Some(Frames::Unsupported(link_type)) if hooked => Some(format!(
            "device {dev} has link type {link_type}, whose frames start with neither an \
             Ethernet nor an IP header: the classifier cannot read them; leave it out of \
             [attach] and give it no sticky gateway"
        )),
        _ => None,
    })?;
    Ok(())
}

/// Gateways that share their device with the main uplink ([`desired::shares_main_uplink`]):
/// a sticky one is refused (its inbound flows cannot be told from the main uplink's on
/// that device), and with `local` the one thing the socket hooks cannot steer is said.
fn shared_uplinks(policy: &Policy, sys: &desired::System<'_>) -> Result<Vec<String>, PlanError> {
    let mut warnings = Vec::new();
    for (i, gw) in policy.gateways.iter().enumerate() {
        let shared = desired::shares_main_uplink(gw, sys);
        if shared.is_empty() {
            continue;
        }
        let families = shared
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(" and ");
        if gw.sticky {
            return Err(PlanError::Config(ConfigError::Invalid {
                file: policy.origin.file.clone(),
                line: policy.origin.gateway_dev.get(i).copied().unwrap_or(0),
                key: format!("gateway[{}].sticky", i + 1),
                message: format!(
                    "gateway {} shares {} with the main uplink (the main table's {families} \
                     default route leaves through it): connections that arrive through the \
                     gateway cannot be told from the main uplink's there, so `sticky` would \
                     answer every inbound connection on {} through {}; give the gateway a \
                     device of its own, or drop `sticky`",
                    gw.name, gw.dev, gw.dev, gw.name
                ),
            }));
        }
        if policy.attach.local {
            warnings.push(format!(
                "gateway {} shares {} with the main uplink ({families}): this host's TCP and \
                 connected UDP follow the policy by their socket mark, but the first datagram \
                 of an unconnected UDP socket leaves by the main table (the mark takes effect \
                 from its second datagram, and the gateway has no address of its own to send \
                 the first from)",
                gw.name, gw.dev
            ));
        }
    }
    Ok(warnings)
}

fn down_warnings(waiting: &[Waiting]) -> Vec<String> {
    waiting
        .iter()
        .filter(|w| w.reason == "down")
        .map(|w| {
            format!(
                "{} is down or has no carrier: its routes wait for it",
                w.dev
            )
        })
        .collect()
}

/// The hooks to attach and detach for `step`, which loads new programs when a kept
/// dataplane gets new hooks.
fn hooks(
    step: DataplaneStep,
    observed: &Observed,
    desired: &Desired,
) -> (DataplaneStep, Vec<Hook>, Vec<usize>) {
    let keep = match step {
        DataplaneStep::Reuse { id, .. } => Some(id),
        _ => None,
    };
    let (attach, detach) = attachments(&observed.attachments, keep, &desired.hooks);
    let step = match step {
        DataplaneStep::Reuse { id, .. } => DataplaneStep::Reuse {
            id,
            new_programs: !attach.is_empty(),
        },
        other => other,
    };
    (step, attach, detach)
}

/// The policy's devices that are missing, and its gateways' devices that are down (only
/// routes need a device up), each once, in policy order.
fn waiting(policy: &Policy, observed: &Observed) -> Vec<Waiting> {
    let gateways = policy.gateways.iter().map(|g| (&g.dev, true));
    let attached = policy.attach.ingress.iter().chain(&policy.attach.egress);
    let mut seen = BTreeSet::new();
    gateways
        .chain(attached.map(|dev| (dev, false)))
        .filter(|(dev, _)| seen.insert(dev.as_str()))
        .filter_map(|(dev, gateway)| {
            let reason = if !observed.links.contains_key(dev) {
                "missing"
            } else if gateway && observed.down.contains(dev) {
                "down"
            } else {
                return None;
            };
            Some(Waiting {
                dev: dev.clone(),
                reason,
            })
        })
        .collect()
}

/// Reuse the dataplane in use when its maps hold the policy, else load a new one; none at
/// all when no hook is wanted.
fn dataplane_step(
    observed: &Observed,
    desired: &Desired,
    compiled: &Compiled,
    warnings: &mut Vec<String>,
) -> DataplaneStep {
    if desired.hooks.is_empty() {
        warnings.push("[attach] names no hook: the classifier marks no traffic".into());
        return DataplaneStep::Unused;
    }
    match &observed.dataplane {
        Some(dp) if dp.capacity.holds(compiled) => DataplaneStep::Reuse {
            id: dp.id,
            new_programs: false,
        },
        Some(dp) => {
            let why = if dp.capacity.trie_nodes <= TRIE_DISABLED_NODES {
                "the policy's prefix sets need the classifier's trie code, which the loaded one \
                 was loaded without (its policy had no sets)"
            } else {
                "the policy outgrew the classifier's maps"
            };
            warnings.push(format!(
                "{why}: loading a new one; rule counters restart at 0"
            ));
            DataplaneStep::Load(Capacity::for_policy(compiled))
        }
        None => DataplaneStep::Load(Capacity::for_policy(compiled)),
    }
}

/// Hooks to attach, and indexes of attachments to detach, when keeping the dataplane
/// `keep` (none: every attachment goes). An attachment stays when its program belongs to
/// the kept dataplane and its hook is still wanted.
fn attachments(
    have: &[Attachment],
    keep: Option<u32>,
    want: &BTreeSet<Hook>,
) -> (Vec<Hook>, Vec<usize>) {
    let kept = |a: &Attachment| keep == Some(a.dataplane);
    let attach = want
        .iter()
        .filter(|h| !have.iter().any(|a| a.hook == **h && kept(a)))
        .cloned()
        .collect();
    let detach = (0..have.len())
        .filter(|&i| !kept(&have[i]) || !want.contains(&have[i].hook))
        .collect();
    (attach, detach)
}

fn cgroups(hooks: &BTreeSet<Hook>) -> Vec<String> {
    let set: BTreeSet<String> = hooks
        .iter()
        .filter_map(|h| match h {
            Hook::Cgroup { cgroup, .. } => Some(cgroup.clone()),
            _ => None,
        })
        .collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests;
