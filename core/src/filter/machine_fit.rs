//! A cluster must have a machine that could hold the task when empty, with
//! the labels the task requires.

use super::{ClusterFilter, Rejection, TaskShape};
use crate::cluster::ClusterSummary;
use crate::labels;
use crate::resources::{ResourceKind, Resources};

pub struct MachineLargeEnough;

impl ClusterFilter for MachineLargeEnough {
    fn name(&self) -> &'static str {
        "machine_large_enough"
    }

    fn check(&self, t: &TaskShape<'_>, c: &ClusterSummary) -> Result<(), Rejection> {
        let mut largest = Resources::ZERO;
        let mut unmet = None;
        for class in &c.classes {
            match labels::first_unmet(t.constraints, &class.labels) {
                Some(u) => {
                    unmet.get_or_insert(u);
                }
                None => {
                    if t.request.fits_in(&class.capacity) {
                        return Ok(());
                    }
                    largest = largest.max(&class.capacity);
                }
            }
        }
        if largest == Resources::ZERO {
            let (label, wanted, found) = unmet.unwrap_or(("", "", None));
            return Err(Rejection::ConstraintUnmet {
                label: label.to_string(),
                wanted: wanted.to_string(),
                found: found.map(str::to_string),
            });
        }
        let resource = t
            .request
            .first_shortfall(&largest)
            .unwrap_or(ResourceKind::Cpu);
        Err(Rejection::NoMachineLargeEnough {
            resource,
            requested: t.request.get(resource),
            largest: largest.get(resource),
        })
    }
}
