//! Filters: the checks that rule a cluster or a machine out for a task, each
//! with a structured reason.
//!
//! Cluster filters run in the global scheduler's ranking; machine filters
//! explain, in the local agent, why a task found no machine. (The packer's
//! hot path does the same checks inline, through its index.)

mod cluster_up;
mod constraints;
mod free_capacity;
mod machine_fit;
mod resources;

use std::fmt;

use serde::Serialize;

pub use cluster_up::ClusterUp;
pub use constraints::LabelsMatch;
pub use free_capacity::FreeCapacity;
pub use machine_fit::MachineLargeEnough;
pub use resources::ResourcesFit;

use crate::cluster::ClusterSummary;
use crate::labels::Labels;
use crate::resources::{ResourceKind, Resources};

/// What a filter needs to know of a task: every task of a job shares it.
#[derive(Debug, Clone, Copy)]
pub struct TaskShape<'a> {
    pub request: &'a Resources,
    pub constraints: &'a Labels,
}

/// One machine as a filter sees it.
#[derive(Debug, Clone, Copy)]
pub struct MachineView<'a> {
    pub capacity: &'a Resources,
    pub free: &'a Resources,
    pub labels: &'a Labels,
    pub up: bool,
}

/// Why a cluster or a machine cannot take a task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// The cluster missed its heartbeats.
    ClusterDown,
    /// The machine missed its heartbeats.
    MachineDown,
    /// No machine of the cluster carries the required label.
    ConstraintUnmet {
        label: String,
        wanted: String,
        found: Option<String>,
    },
    /// No machine of the cluster is large enough, even empty.
    NoMachineLargeEnough {
        resource: ResourceKind,
        requested: u64,
        largest: u64,
    },
    /// The cluster's capacity not yet allocated or promised is too small.
    ClusterFull {
        resource: ResourceKind,
        requested: u64,
        unclaimed: u64,
    },
    /// The machine lacks free capacity in one resource.
    InsufficientResource {
        resource: ResourceKind,
        requested: u64,
        free: u64,
        capacity: u64,
    },
    /// The cluster already tried the task and handed it back.
    HandedBack,
    /// The cluster's capacity would hold the task, summed, but no machine
    /// has room for it (what the global level learns by asking the packer).
    NoMachineWithRoom,
}

impl Rejection {
    /// Whether evicting lower-priority work could make room (Kubernetes'
    /// `Unschedulable`), as opposed to a mismatch that no eviction cures
    /// (`UnschedulableAndUnresolvable`).
    pub fn preemption_could_help(&self) -> bool {
        matches!(
            self,
            Rejection::ClusterFull { .. }
                | Rejection::InsufficientResource { .. }
                | Rejection::NoMachineWithRoom
        )
    }

    /// A short key for counting rejections of one kind: `insufficient cpu`.
    pub fn summary(&self) -> String {
        match self {
            Rejection::ClusterDown => "cluster down".into(),
            Rejection::MachineDown => "machine down".into(),
            Rejection::ConstraintUnmet { label, wanted, .. } => {
                format!("constraint {label}={wanted} unmet")
            }
            Rejection::NoMachineLargeEnough { resource, .. } => {
                format!("no machine with enough {resource}")
            }
            Rejection::ClusterFull { resource, .. } => format!("cluster out of {resource}"),
            Rejection::InsufficientResource { resource, .. } => format!("insufficient {resource}"),
            Rejection::HandedBack => "cluster could not place it".into(),
            Rejection::NoMachineWithRoom => "no machine with room for it".into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::ConstraintUnmet {
                label,
                wanted,
                found,
            } => write!(
                f,
                "constraint {label}={wanted} unmet (found {})",
                found.as_deref().unwrap_or("no such label")
            ),
            Rejection::NoMachineLargeEnough {
                resource,
                requested,
                largest,
            } => write!(
                f,
                "no machine with enough {resource}: requested {requested}, largest machine {largest}"
            ),
            Rejection::ClusterFull {
                resource,
                requested,
                unclaimed,
            } => write!(
                f,
                "cluster out of {resource}: requested {requested}, unclaimed {unclaimed}"
            ),
            Rejection::InsufficientResource {
                resource,
                requested,
                free,
                capacity,
            } => write!(
                f,
                "insufficient {resource}: requested {requested}, free {free} of {capacity}"
            ),
            other => f.write_str(&other.summary()),
        }
    }
}

/// A check that rules a cluster out for a task.
pub trait ClusterFilter {
    fn name(&self) -> &'static str;
    fn check(&self, t: &TaskShape<'_>, c: &ClusterSummary) -> Result<(), Rejection>;
}

/// A check that rules a machine out for a task.
pub trait MachineFilter {
    fn name(&self) -> &'static str;
    fn check(&self, t: &TaskShape<'_>, m: &MachineView<'_>) -> Result<(), Rejection>;
}

/// The cluster filters, in the order they run (cheapest and most decisive first).
pub fn cluster_filters() -> [&'static dyn ClusterFilter; 3] {
    [&ClusterUp, &MachineLargeEnough, &FreeCapacity]
}

/// The machine filters, in the order they run.
pub fn machine_filters() -> [&'static dyn MachineFilter; 2] {
    [&LabelsMatch, &ResourcesFit]
}
