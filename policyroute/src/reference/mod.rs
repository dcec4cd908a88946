//! The judge beside the pipeline: a reference classifier in plain Rust and the frames it
//! and the loaded program are fed. Tests, benchmarks and `explain` compare the eBPF
//! program's verdicts with [`classifier`]'s.
pub mod classifier;
pub mod frame;
pub mod targets;
