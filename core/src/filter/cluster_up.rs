//! A cluster that missed its heartbeats gets no new work.

use super::{ClusterFilter, Rejection, TaskShape};
use crate::cluster::ClusterSummary;

pub struct ClusterUp;

impl ClusterFilter for ClusterUp {
    fn name(&self) -> &'static str {
        "cluster_up"
    }

    fn check(&self, _: &TaskShape<'_>, c: &ClusterSummary) -> Result<(), Rejection> {
        if c.up {
            Ok(())
        } else {
            Err(Rejection::ClusterDown)
        }
    }
}
