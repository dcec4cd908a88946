//! Uplink failover in `run`: the health checks the policy asks for, and the switch that
//! follows a verdict: every gateway's and group's state is computed again from the
//! health and the changed ones are written (one map write per target and family), and the
//! sticky flows of a gateway that went down are dropped. Nothing else is observed or
//! written, so a switch costs the same whatever the size of the policy.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use policyroute_common::TargetState;

use super::ControlError;
use crate::{
    health::{CheckSpec, Method},
    kernel::{maps::SwitchMaps, observe::monotonic_ns},
    plan::{
        targets::{self, Health, TargetIds},
        Observed, Plan,
    },
    policy::{matcher::Family, CheckMethod, Policy},
};

/// Health check verdicts (up?) by gateway and family.
pub type Checks = BTreeMap<(String, Family), bool>;

/// The checks of a policy: one per gateway and family it has targets of.
pub fn check_specs(policy: &Policy) -> Vec<CheckSpec> {
    let mut specs = Vec::new();
    for g in &policy.gateways {
        let Some(check) = &g.check else { continue };
        for family in targets::FAMILIES {
            let addresses: Vec<_> = check.targets_of(family).copied().collect();
            if addresses.is_empty() {
                continue;
            }
            specs.push(CheckSpec {
                gateway: g.name.clone(),
                family,
                dev: g.dev.clone(),
                mark: g.mark & policy.mark_mask,
                targets: addresses,
                method: match check.method {
                    CheckMethod::Icmp => Method::Icmp,
                    CheckMethod::Tcp(port) => Method::Tcp(port),
                },
                interval: Duration::from_millis(u64::from(check.interval_ms)),
                timeout: Duration::from_millis(u64::from(check.timeout_ms)),
                count: check.count,
                down: check.down,
                up: check.up,
            });
        }
    }
    specs
}

/// What the last pass left for switching without another: the health and states it
/// wrote, which devices had carrier, and the two maps a switch writes.
pub struct Switchboard {
    health: Health,
    targets: BTreeMap<u32, TargetState>,
    carrier: BTreeSet<String>,
    ids: TargetIds,
    ttl_ns: u64,
    maps: Option<SwitchMaps>,
}

/// What a switch changed.
#[derive(Debug, Default)]
pub struct Switched {
    /// Target states written.
    pub states: usize,
    /// Sticky flow records dropped.
    pub flows: usize,
    /// (gateway, family, up) whose effective health changed.
    pub changes: Vec<(String, Family, bool)>,
}

impl Switchboard {
    pub fn new(plan: &Plan, observed: &Observed, maps: Option<SwitchMaps>) -> Self {
        let carrier = observed
            .links
            .keys()
            .filter(|dev| !observed.down.contains(*dev))
            .cloned()
            .collect();
        Self {
            health: plan.health.clone(),
            targets: plan.targets.clone(),
            carrier,
            ids: plan.ids.clone(),
            ttl_ns: plan.sticky_ttl_ns,
            maps,
        }
    }

    /// Every gateway's health as last written.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Applies changed check verdicts: the states they change are written under the
    /// namespace lock (so a concurrent `apply` does not interleave).
    pub fn switch(&mut self, policy: &Policy, checks: &Checks) -> Result<Switched, ControlError> {
        let carrier = |dev: &str| self.carrier.contains(dev);
        let check = |name: &str, family| checks.get(&(name.to_owned(), family)).copied();
        let health = targets::health(policy, &carrier, &check, &self.health);
        let states = targets::states(
            policy,
            &self.ids,
            &health,
            &self.targets,
            monotonic_ns(),
            self.ttl_ns,
        );
        let gone = targets::gone_down(policy, &self.health, &health);
        let changes = health
            .iter()
            .filter(|(k, h)| self.health.get(*k).is_none_or(|b| b.up != h.up))
            .map(|((name, family), h)| (name.clone(), *family, h.up))
            .collect();
        let (written, flows) = match &mut self.maps {
            Some(maps) => {
                let _lock = super::lock()?;
                maps.switch(&states, &self.targets, &gone)?
            }
            None => (0, 0),
        };
        self.health = health;
        self.targets = states;
        Ok(Switched {
            states: written,
            flows,
            changes,
        })
    }
}

impl std::fmt::Debug for Switchboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switchboard")
            .field("health", &self.health)
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}
