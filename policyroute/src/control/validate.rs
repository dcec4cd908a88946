//! `policyroute validate -c FILE`: every check of a policy that needs no kernel state and no
//! privileges (syntax, meaning, list files, rt_tables names, and what compiling the
//! classifier can refuse). Devices the policy names that this namespace lacks are warnings:
//! the file may be meant for another machine, or for devices that come later.
use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

use super::{ControlError, Options};
use crate::{
    plan::{self, compile::compile_policy, slots, targets::TargetIds, PlanError},
    policy::Policy,
};

#[derive(Debug, Serialize)]
pub struct Validation {
    pub file: String,
    pub gateways: usize,
    pub groups: usize,
    pub sets: usize,
    pub rules: usize,
    /// Classifier entries the rules compile to.
    pub entries: usize,
    pub warnings: Vec<String>,
}

pub fn validate(path: &Path, opts: &Options) -> Result<Validation, ControlError> {
    let tables = opts.tables()?;
    let policy = Policy::load(path, &tables)?;
    plan::check_hooked(&policy)?;
    let slots = slots::assign(&policy, None);
    let ids = TargetIds::of(&policy);
    let compiled = compile_policy(&policy, &slots.slots, &BTreeMap::new(), &ids)
        .map_err(|e| ControlError::Plan(PlanError::Compile(e)))?;
    let warnings = match policy.check_devices(exists) {
        Ok(()) => Vec::new(),
        Err(e) => e
            .errors()
            .into_iter()
            .map(|e| format!("{e} here (applying it in this namespace would be refused)"))
            .collect(),
    };
    Ok(Validation {
        file: path.display().to_string(),
        gateways: policy.gateways.len(),
        groups: policy.groups.len(),
        sets: policy.sets.len(),
        rules: policy.rules.len(),
        entries: compiled.entries.len(),
        warnings,
    })
}

/// Whether this namespace has device `name` (no privileges needed).
fn exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated name; the call only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}
