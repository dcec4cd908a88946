//! Stage 1 of the pipeline: the policy file (TOML), read and validated into a [`Policy`]:
//! gateways, ordered classifier rules, attach points.
//!
//! ```toml
//! mark_mask = 0xffffffff     # bits the policy may set in skb->mark (non-zero)
//! rule_priority = 10000      # first ip rule priority the tool uses
//! main_routes_first = true   # `lookup main suppress_prefixlength 0` ahead of the fwmark rules
//! fast_path = false          # tc ingress forwards matched traffic itself (bpf_fib_lookup in the
//!                            # gateway's table + bpf_redirect_neigh); no ip rules where none are needed
//!
//! [[gateway]]
//! name = "isp2"
//! dev = "wan2"
//! via = "203.0.113.2"        # or a list, at most one address per family; absent: device route
//! table = 100                # or an rt_tables name
//! mark = 4                   # optional; derived when absent
//! check = { targets = ["198.18.0.53"], method = "icmp", interval = 0.5, timeout = 1.0, down = 3, up = 3 }
//!
//! [[group]]                  # gateways sharing traffic: lowest live tier, flows by weight
//! name = "wan"
//! members = [ { gateway = "isp1", weight = 3 }, { gateway = "isp2" }, { gateway = "lte", tier = 2 } ]
//!
//! [[rule]]                   # first match in file order wins
//! name = "web-via-isp2"      # optional, default "rule-N"
//! proto = "tcp"
//! src = "192.168.99.0/24"
//! dport = [80, 443, "8000-8099"]
//! gateway = "isp2"           # a gateway or group, or mark = N (a mark consumed elsewhere; 0 exempts)
//! when_down = "main"         # or "blackhole": drop while the gateway or group has no live member
//!
//! [attach]
//! ingress = ["lan0"]
//! mode = "auto"             # or "tcx" (Linux 6.6+) or "tc" (clsact + cls_bpf); auto picks tcx where it exists
//! ```
//!
//! Everything is validated before any kernel change. Errors read `FILE:LINE: KEY: MESSAGE`
//! where KEY is the path of the offending value. **Indices in keys are 1-based**, for tables
//! and list elements alike, matching the default rule names: `gateway[1].table` is the
//! first `[[gateway]]`, `rule[3].dport[2]` the second element of the third rule's `dport`,
//! `attach.ingress[1]` the first ingress device.
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use incremental::Digests;
use matcher::{Match, Rule};
use rt_tables::RtTables;

pub mod bounded_file;
mod error;
pub mod incremental;
mod marks;
pub mod matcher;
pub mod ports;
pub mod protocol;
mod read;
mod read_rules;
mod read_sets;
mod read_uplinks;
pub mod rt_tables;
pub mod sets;
mod toml_tree;
pub mod uplinks;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use uplinks::{Check, CheckMethod, Group, Member, WhenDown};

pub const DEFAULT_MARK_MASK: u32 = 0xffff_ffff;

fn default_sticky_timeout() -> u32 {
    read::DEFAULT_STICKY_TIMEOUT
}
pub const DEFAULT_RULE_PRIORITY: u32 = 10_000;
/// The priority of the kernel's `lookup main` rule; the tool's rules must come before it
/// (and `32767 lookup default` after it).
pub const MAIN_RULE_PRIORITY: u32 = 32_766;

/// A policy file read and cut into its `[[rule]]` tables, which needs no earlier read:
/// `apply` does it while it decodes the record of the last apply.
pub struct PolicyText {
    label: String,
    bytes: Vec<u8>,
    split: Option<incremental::Split>,
}

impl PolicyText {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let bytes = bounded_file::read(path, bounded_file::MAX_POLICY_FILE).map_err(|source| {
            ConfigError::Io {
                path: path.to_owned(),
                source,
            }
        })?;
        let split = std::str::from_utf8(&bytes)
            .ok()
            .and_then(incremental::split);
        Ok(Self {
            label: path.display().to_string(),
            bytes,
            split,
        })
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mark_mask: u32,
    pub rule_priority: u32,
    pub main_routes_first: bool,
    /// Matched forwarded traffic is forwarded by the tc program itself (see
    /// `plan::fast_path`), and ip rules are installed only for what needs them.
    pub fast_path: bool,
    /// Seconds a sticky flow is remembered after its last inbound packet.
    #[serde(default = "default_sticky_timeout")]
    pub sticky_timeout: u32,
    pub gateways: Vec<Gateway>,
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Named prefix sets (`[[set]]`), which rules refer to as `@name`.
    #[serde(default)]
    pub sets: Vec<std::sync::Arc<sets::PrefixSet>>,
    /// In file order: the first matching rule wins.
    pub rules: Vec<PolicyRule>,
    pub attach: Attach,
    /// Where values were written, for errors found after parsing.
    #[serde(skip)]
    pub origin: Origin,
}

/// A next hop with its own routing table and the mark that selects it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub name: String,
    pub dev: String,
    /// At most one address per family; empty: a device-only (point-to-point) route.
    pub via: Vec<IpAddr>,
    pub table: u32,
    /// The rt_tables name when the file named the table, `None` when it gave a number.
    pub table_name: Option<String>,
    /// As written, or derived (see [`Policy::parse`]).
    pub mark: u32,
    /// Connections that arrive through this gateway are answered through it.
    #[serde(default)]
    pub sticky: bool,
    /// Without one, the gateway is up while its device is up with carrier.
    #[serde(default)]
    pub check: Option<Check>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub name: String,
    pub matcher: Match,
    pub target: Target,
    /// Only for a gateway or group target.
    #[serde(default)]
    pub when_down: WhenDown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Route via this gateway or group (by name): the rule sets the mark of the gateway,
    /// or of the group member the flow is given, while it is up.
    Gateway(String),
    /// Set this mark, for something other than this policy's gateways to act on.
    /// 0 clears the bits under the mask: the traffic is exempt from later rules.
    Mark(u32),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// Devices whose tc ingress hook gets the classifier.
    pub ingress: Vec<String>,
    /// Devices whose tc egress hook gets the classifier: marks for consumers after routing
    /// (qdiscs, accounting); an egress mark does not re-route.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Classify this host's own sockets (cgroup connect/sendmsg hooks).
    #[serde(default)]
    pub local: bool,
    /// The cgroup (v2 path, e.g. `/` or `/system.slice`) whose sockets are classified.
    #[serde(default)]
    pub local_cgroup: Option<String>,
    /// How the TC programs attach (`mode`); in the state record too, so `status` and
    /// `check` compare the hooks with the path the policy asked for.
    #[serde(default)]
    pub mode: AttachMode,
}

/// `[attach] mode`: which TC hook the classifier uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// tcx where the kernel has it (6.6+), else classic tc.
    #[default]
    Auto,
    /// tcx only: an error on kernels without it.
    Tcx,
    /// The clsact qdisc with direct-action bpf filters, even where tcx exists.
    Tc,
}

/// Source lines of the values that can only be checked against the running system.
///
/// Not part of what the policy means, so equality ignores it: the same policy written
/// with different layout (or in another file) compares equal, and a reload can tell
/// whether anything changed.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// The file label errors name.
    pub file: String,
    /// 1-based line of `gateway[i].dev`, by gateway index.
    pub gateway_dev: Vec<usize>,
    /// 1-based line of `attach.ingress[i]`, by device index.
    pub ingress: Vec<usize>,
    /// 1-based line of `attach.egress[i]`, by device index.
    pub egress: Vec<usize>,
    /// 1-based line of `attach.mode`, when written.
    pub attach_mode: Option<usize>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

impl Policy {
    /// Reads and validates the policy at `path`; errors are labelled with `path`.
    pub fn load(path: &Path, tables: &RtTables) -> Result<Policy, ConfigError> {
        Self::load_again(path, tables, None).map(|(policy, _)| policy)
    }

    /// [`Policy::parse`] for a file's bytes. Bytes that are not UTF-8 are an error at the
    /// line of the first bad one: reading the file as a string would reject it naming
    /// only the file, unlike every other problem.
    pub fn parse_bytes(
        bytes: &[u8],
        file_label: &str,
        tables: &RtTables,
    ) -> Result<Policy, ConfigError> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| error::not_utf8(bytes, &e, file_label))?;
        Self::parse(text, file_label, tables)
    }

    /// [`Policy::load`] after an earlier read of the same file, `previous` with its
    /// digests: `[[rule]]` tables whose text did not change are taken from it (see
    /// [`incremental`]). Returns the digests for the next read too (`None` for a file the
    /// shortcut cannot follow).
    pub fn load_again(
        path: &Path,
        tables: &RtTables,
        previous: Option<(&Policy, &Digests)>,
    ) -> Result<(Policy, Option<Digests>), ConfigError> {
        Self::read_again(PolicyText::read(path)?, tables, previous)
    }

    /// [`Policy::load_again`] of a file already read (and split) by [`PolicyText::read`].
    pub fn read_again(
        file: PolicyText,
        tables: &RtTables,
        previous: Option<(&Policy, &Digests)>,
    ) -> Result<(Policy, Option<Digests>), ConfigError> {
        let Ok(text) = std::str::from_utf8(&file.bytes) else {
            // The full read names the line of the first bad byte.
            return Self::parse_bytes(&file.bytes, &file.label, tables).map(|p| (p, None));
        };
        let digests = file.split.as_ref().map(incremental::Split::digests);
        if let (Some((policy, earlier)), Some(split)) = (previous, &file.split) {
            let again = incremental::reread(text, split, &file.label, tables, policy, earlier);
            if let Some(again) = again {
                return Ok((again, digests));
            }
        }
        Ok((Self::parse(text, &file.label, tables)?, digests))
    }

    /// Parses and validates policy text; errors are labelled `file_label`. All problems
    /// found are reported ([`ConfigError::Many`] when there is more than one), except that
    /// a TOML syntax error stops at the first.
    ///
    /// A gateway without `mark` gets the k-th smallest value representable under
    /// `mark_mask` (k's bits deposited into the mask's set bits, lowest first), for the
    /// smallest k whose value no other gateway or rule uses explicitly.
    pub fn parse(text: &str, file_label: &str, tables: &RtTables) -> Result<Policy, ConfigError> {
        read::policy(text, file_label, tables)
    }

    /// Binds rules' set references to the policy's sets again (records keep only names).
    pub fn link_sets(&mut self) {
        let by_name: std::collections::HashMap<&str, &std::sync::Arc<sets::PrefixSet>> =
            self.sets.iter().map(|s| (s.name.as_str(), s)).collect();
        for rule in &mut self.rules {
            let m = &mut rule.matcher;
            for r in [&mut m.src_set, &mut m.dst_set].into_iter().flatten() {
                if let Some(set) = by_name.get(r.name.as_str()) {
                    r.set = std::sync::Arc::clone(set);
                }
            }
        }
    }

    pub fn set(&self, name: &str) -> Option<&sets::PrefixSet> {
        self.sets.iter().find(|s| s.name == name).map(|s| &**s)
    }

    /// Devices whose addresses a plan needs: the gateways' (source addresses, `from`
    /// rules), and with the fast path the classifying devices' (its ICMP errors' source).
    pub fn address_devices(&self) -> Vec<&str> {
        let gateways = self.gateways.iter().map(|g| g.dev.as_str());
        let ingress = self.attach.ingress.iter().map(String::as_str);
        let fast = self.fast_path.then_some(ingress).into_iter().flatten();
        gateways.chain(fast).collect()
    }

    /// Reports gateway devices and ingress devices for which `exists` is false.
    pub fn check_devices(&self, exists: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        self.check_each_device(|dev, _| {
            // The kernel takes control characters in a device name; a terminal should not.
            (!exists(dev)).then(|| format!("device {} does not exist", error::escape_controls(dev)))
        })
    }

    /// Every device the policy names, at its line and key: `problem(dev, hooked)` says what
    /// is wrong with one, if anything. `hooked`: a program attaches to it (`[attach]`
    /// ingress or egress, or a sticky gateway's device).
    pub fn check_each_device(
        &self,
        problem: impl Fn(&str, bool) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let line = |lines: &[usize], i: usize| lines.get(i).copied().unwrap_or(0);
        let gateways = self.gateways.iter().enumerate().map(|(i, g)| {
            let key = format!("gateway[{}].dev", i + 1);
            (&g.dev, g.sticky, line(&self.origin.gateway_dev, i), key)
        });
        let ingress = self.attach.ingress.iter().enumerate().map(|(i, dev)| {
            let key = format!("attach.ingress[{}]", i + 1);
            (dev, true, line(&self.origin.ingress, i), key)
        });
        let egress = self.attach.egress.iter().enumerate().map(|(i, dev)| {
            let key = format!("attach.egress[{}]", i + 1);
            (dev, true, line(&self.origin.egress, i), key)
        });
        let errors = gateways
            .chain(ingress)
            .chain(egress)
            .filter_map(|(dev, hooked, line, key)| {
                Some(ConfigError::Invalid {
                    file: self.origin.file.clone(),
                    line,
                    key,
                    message: problem(dev, hooked)?,
                })
            })
            .collect();
        ConfigError::from_all(errors)
    }

    /// Classifier rules in file order with each target resolved to a mark (the gateway's
    /// mark or the raw mark). A gateway name that does not exist (possible only in a
    /// policy built by hand) resolves to 0, which leaves the traffic unrouted by the policy.
    pub fn classifier_rules(&self) -> Vec<Rule> {
        self.rules
            .iter()
            .map(|r| Rule {
                name: r.name.clone(),
                matcher: r.matcher.clone(),
                mark: self.mark_of(&r.target),
            })
            .collect()
    }

    /// The mark a rule's target sets (see [`Policy::classifier_rules`]).
    pub fn mark_of(&self, target: &Target) -> u32 {
        match target {
            Target::Gateway(name) => self.gateway(name).map_or(0, |g| g.mark),
            Target::Mark(mark) => *mark,
        }
    }

    pub fn gateway(&self, name: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}
