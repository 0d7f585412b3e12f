//! A machine must be up and have the task's request free in every resource.

use super::{MachineFilter, MachineView, Rejection, TaskShape};

pub struct ResourcesFit;

impl MachineFilter for ResourcesFit {
    fn name(&self) -> &'static str {
        "resources_fit"
    }

    fn check(&self, t: &TaskShape<'_>, m: &MachineView<'_>) -> Result<(), Rejection> {
        if !m.up {
            return Err(Rejection::MachineDown);
        }
        match t.request.first_shortfall(m.free) {
            None => Ok(()),
            Some(resource) => Err(Rejection::InsufficientResource {
                resource,
                requested: t.request.get(resource),
                free: m.free.get(resource),
                capacity: m.capacity.get(resource),
            }),
        }
    }
}
