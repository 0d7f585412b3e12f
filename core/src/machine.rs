//! Machines: the hardware that tasks run on.

use std::fmt;

use serde::Serialize;

use crate::labels::Labels;
use crate::resources::Resources;

/// A machine's index within its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MachineId(pub u32);

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// A class of identical machines: same capacity, same labels.
///
/// Machines of a class are interchangeable, which the packer exploits: its
/// index is kept per class, and an empty machine of a class is as good as any
/// other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineClass {
    pub name: String,
    pub count: u32,
    pub capacity: Resources,
    pub labels: Labels,
}

impl MachineClass {
    /// The name of machine `i` of this class, as the simulator shows it (`std-17`).
    pub fn machine_name(&self, i: u32) -> String {
        format!("{}-{}", self.name, i)
    }
}
