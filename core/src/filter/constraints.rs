//! A machine must carry every label the task requires.

use super::{MachineFilter, MachineView, Rejection, TaskShape};
use crate::labels;

pub struct LabelsMatch;

impl MachineFilter for LabelsMatch {
    fn name(&self) -> &'static str {
        "labels_match"
    }

    fn check(&self, t: &TaskShape<'_>, m: &MachineView<'_>) -> Result<(), Rejection> {
        match labels::first_unmet(t.constraints, m.labels) {
            None => Ok(()),
            Some((label, wanted, found)) => Err(Rejection::ConstraintUnmet {
                label: label.to_string(),
                wanted: wanted.to_string(),
                found: found.map(str::to_string),
            }),
        }
    }
}
