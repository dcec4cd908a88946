//! Helpers shared by the integration tests.
pub mod classifier;
pub mod netns;
pub mod rules;
