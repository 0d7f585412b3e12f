//! Clusters (cells): a set of machines at one location, run by one local agent.

use std::fmt;

use serde::Serialize;

use crate::band::PriorityPolicy;
use crate::labels::Labels;
use crate::locality::LocationId;
use crate::machine::MachineClass;
use crate::resources::Resources;

/// A cluster's index in the topology (or in the global scheduler's registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ClusterId(pub u32);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A cluster as the topology declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    pub id: ClusterId,
    pub name: String,
    pub location: LocationId,
    pub classes: Vec<MachineClass>,
}

impl Cluster {
    pub fn machine_count(&self) -> u64 {
        self.classes.iter().map(|c| u64::from(c.count)).sum()
    }

    pub fn capacity(&self) -> Resources {
        self.classes.iter().fold(Resources::ZERO, |acc, c| {
            acc.saturating_add(&c.capacity.times(u64::from(c.count)))
        })
    }
}

/// What the global scheduler knows of a machine class in a cluster: enough to
/// tell whether a task could ever run there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassSummary {
    pub capacity: Resources,
    pub labels: Labels,
    pub count: u32,
}

/// The global scheduler's view of one cluster: from the topology in the
/// simulator, from the local agent's heartbeats in the daemons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSummary {
    pub id: ClusterId,
    pub name: String,
    pub location: LocationId,
    /// False when the cluster missed its heartbeats.
    pub up: bool,
    pub classes: Vec<ClassSummary>,
    /// Sum of all machines' capacity.
    pub capacity: Resources,
    /// Sum of the requests of the tasks placed on machines.
    pub allocated: Resources,
    /// Sum of the requests of the tasks handed to the cluster and not placed yet.
    pub queued: Resources,
    /// Number of tasks handed to the cluster and not placed yet.
    pub queue_len: u64,
    /// `allocated` by the priority of the tasks holding it, lowest priority
    /// first: what preemption could free for a task of higher priority.
    pub by_priority: Vec<(u32, Resources)>,
}

impl ClusterSummary {
    /// A summary of an empty, healthy cluster.
    pub fn from_cluster(c: &Cluster) -> Self {
        ClusterSummary {
            id: c.id,
            name: c.name.clone(),
            location: c.location,
            up: true,
            classes: c
                .classes
                .iter()
                .map(|k| ClassSummary {
                    capacity: k.capacity,
                    labels: k.labels.clone(),
                    count: k.count,
                })
                .collect(),
            capacity: c.capacity(),
            allocated: Resources::ZERO,
            queued: Resources::ZERO,
            queue_len: 0,
            by_priority: Vec::new(),
        }
    }

    /// Capacity neither allocated nor promised to queued tasks.
    pub fn unclaimed(&self) -> Resources {
        self.capacity
            .saturating_sub(&self.allocated)
            .saturating_sub(&self.queued)
    }

    /// The capacity held by tasks that a task of `priority` may preempt.
    pub fn preemptible_for(&self, priority: u32, bands: &PriorityPolicy) -> Resources {
        self.by_priority
            .iter()
            .take_while(|(p, _)| *p < priority)
            .filter(|(p, _)| bands.may_preempt(priority, *p))
            .fold(Resources::ZERO, |acc, (_, r)| acc.saturating_add(r))
    }

    /// Promises `amount` of the capacity that tasks of `priority` may
    /// preempt to them, lowest priorities first, so that the next job of
    /// the pass is not promised the same.
    pub fn claim_preemptible(&mut self, priority: u32, amount: Resources, bands: &PriorityPolicy) {
        let mut left = amount;
        for (p, r) in self.by_priority.iter_mut() {
            if left.is_zero() || *p >= priority {
                break;
            }
            if !bands.may_preempt(priority, *p) {
                continue;
            }
            let taken = Resources::from_array(std::array::from_fn(|i| {
                r.as_array()[i].min(left.as_array()[i])
            }));
            *r = r.saturating_sub(&taken);
            left = left.saturating_sub(&taken);
        }
        self.by_priority.retain(|(_, r)| !r.is_zero());
    }

    /// Counts `request` placed `n` times at `priority` in `by_priority`
    /// (with `add`), or taken off (without).
    pub fn count_priority(&mut self, priority: u32, request: &Resources, n: u64, add: bool) {
        let total = request.times(n);
        let at = self.by_priority.partition_point(|(p, _)| *p < priority);
        match self.by_priority.get_mut(at) {
            Some((p, r)) if *p == priority => {
                *r = if add {
                    r.saturating_add(&total)
                } else {
                    r.saturating_sub(&total)
                };
                if r.is_zero() {
                    self.by_priority.remove(at);
                }
            }
            _ if add && !total.is_zero() => self.by_priority.insert(at, (priority, total)),
            _ => {}
        }
    }
}
