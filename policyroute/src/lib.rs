//! policyroute: policy routing with an eBPF TC classifier that sets `skb->mark`.
//!
//! - [`rule`], [`ports`]: what a rule matches.
//! - [`compile`]: rules to tuple-space tables (shapes and hash entries).
//! - [`model`]: the reference classifier in plain Rust (differential tests, explain).
//! - [`dataplane`], [`object`], [`testrun`]: the kernel side: load, fill maps, test-run.
pub mod attach;
pub mod bpfcall;
pub mod compile;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod frame;
pub mod model;
pub mod namespace;
pub mod netlink;
pub mod object;
pub mod ports;
pub mod rt_tables;
pub mod rule;
pub mod state;
pub mod testrun;
