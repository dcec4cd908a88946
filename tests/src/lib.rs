//! Helpers shared by the integration tests.
pub mod bench;
pub mod bench_net;
pub mod cgroup;
pub mod classifier;
pub mod cli;
pub mod daemon;
pub mod faults;
pub mod fixture;
pub mod hops;
pub mod metrics;
pub mod netns;
pub mod probe;
pub mod random;
pub mod recipe;
pub mod rules;
pub mod spread;
pub mod topology;
