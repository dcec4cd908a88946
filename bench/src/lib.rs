//! The benchmarks' shared pieces (`cargo xtask bench`, never part of the test suite). The
//! binaries in `src/bin` measure; the namespaces and topologies they measure in are the
//! tests' (`policyroute-tests`).
pub mod net;
pub mod objects;
pub mod results;
