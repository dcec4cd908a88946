//! Helpers shared by the integration tests.
pub mod classifier;
pub mod netns;
pub mod random;
pub mod rules;
