//! Placements and the reasons a task could not be placed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::cluster::ClusterId;
use crate::filter::Rejection;
use crate::machine::MachineId;

/// Where one task runs: its index in its job, its cluster and machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TaskLocation {
    pub task: u32,
    pub cluster: ClusterId,
    pub machine: MachineId,
}

/// Why a task found no machine: how many machines were considered and how
/// many were ruled out for each reason (like Nomad's `AllocMetric`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Unschedulable {
    pub machines_considered: u32,
    /// Rejection summary (`insufficient cpu`) to the number of machines.
    pub reasons: BTreeMap<String, u32>,
    /// True when some rejection could be cured by evicting lower-priority work.
    pub preemption_could_help: bool,
}

impl Unschedulable {
    pub fn record(&mut self, r: Rejection, machines: u32) {
        *self.reasons.entry(r.summary()).or_insert(0) += machines;
        self.preemption_could_help |= r.preemption_could_help();
    }

    /// Reasons, most common first (ties in name order).
    pub fn top_reasons(&self) -> Vec<(&str, u32)> {
        let mut v: Vec<(&str, u32)> = self.reasons.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} machines available", self.machines_considered)?;
        let reasons = self.top_reasons();
        if !reasons.is_empty() {
            let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            write!(f, ": {}", parts.join(", "))?;
        }
        Ok(())
    }
}
