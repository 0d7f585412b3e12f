//! A cluster whose capacity is all allocated or promised to queued tasks
//! cannot take even one more task.
//!
//! This is a necessary condition only: the unclaimed capacity may be spread
//! over machines in slivers too small for the task. The local agent finds
//! out, and hands back what it cannot place.

use super::{ClusterFilter, Rejection, TaskShape};
use crate::cluster::ClusterSummary;

pub struct FreeCapacity;

impl ClusterFilter for FreeCapacity {
    fn name(&self) -> &'static str {
        "free_capacity"
    }

    fn check(&self, t: &TaskShape<'_>, c: &ClusterSummary) -> Result<(), Rejection> {
        let unclaimed = c.unclaimed();
        match t.request.first_shortfall(&unclaimed) {
            None => Ok(()),
            Some(resource) => Err(Rejection::ClusterFull {
                resource,
                requested: t.request.get(resource),
                unclaimed: unclaimed.get(resource),
            }),
        }
    }
}
