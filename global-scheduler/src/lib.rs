//! The global scheduler.
//!
//! Its decisions live in `sched-core` ([`sched_core::rank`]); the gRPC
//! service, the etcd store and the hand-off to local agents are still to
//! come. For now the crate checks the files the service will read.

use std::path::Path;

use anyhow::Context;

/// Loads and validates the policy and topology files, if given.
pub fn check_inputs(policy: Option<&Path>, topology: Option<&Path>) -> anyhow::Result<()> {
    if let Some(p) = policy {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        sched_core::policy::Policy::from_yaml(&text)
            .with_context(|| format!("invalid policy {}", p.display()))?;
    }
    if let Some(t) = topology {
        let text =
            std::fs::read_to_string(t).with_context(|| format!("cannot read {}", t.display()))?;
        sched_core::topology::Topology::from_yaml(&text)
            .with_context(|| format!("invalid topology {}", t.display()))?;
    }
    Ok(())
}
