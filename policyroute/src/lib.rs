//! policyroute: policy routing with an eBPF TC classifier that sets `skb->mark`.
//!
//! A command is one pass through four stages, each a module:
//!
//! 1. [`policy`]: read and validate the operator's TOML file into a [`policy::Policy`].
//! 2. [`kernel::observe`]: look at the namespace (devices, addresses, our ip rules, routes,
//!    hooks and maps, and the record of the last apply).
//! 3. [`plan`]: a pure function of the policy, the observation and the previous record: the
//!    compiled classifier tables, the ip rules and routes to add and remove, the hooks to
//!    attach and detach. No syscalls; unit-tested without root.
//! 4. [`kernel`]: carry the plan out (maps, attachments, netlink), nothing else decides.
//!
//! [`control`] strings the stages together per command (apply, status, explain, flush) and
//! [`present`] renders their reports. [`reference`] is the judge beside the pipeline: a
//! plain-Rust reference classifier and frame synthesis that tests, benchmarks and `explain`
//! hold the loaded eBPF program to. [`health`] checks the gateways with probes routed
//! through each of them and reports when one goes down or comes back.
pub mod control;
pub mod health;
pub mod import;
pub mod kernel;
pub mod manual;
pub mod plan;
pub mod policy;
pub mod present;
pub mod reference;
