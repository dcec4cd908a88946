//! policyroute: policy routing with an eBPF TC classifier that sets `skb->mark`.
//!
//! - [`rule`], [`ports`]: what a rule matches.
//! - [`compile`]: rules to tuple-space tables (shapes and hash entries).
//! - [`model`]: the reference classifier in plain Rust (differential tests, explain).
//! - [`dataplane`], [`object`], [`testrun`]: the kernel side: load, fill maps, test-run.
pub mod compile;
pub mod dataplane;
pub mod frame;
pub mod model;
pub mod object;
pub mod ports;
pub mod rule;
pub mod testrun;
