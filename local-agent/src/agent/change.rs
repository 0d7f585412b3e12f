//! One write the local agent makes, with what it means: what to record
//! once the write is in, and what to undo if it fails.

use sched_store::Write;

use super::intent::Placement;
use super::keys::TaskKey;

#[derive(Debug)]
pub enum Change {
    /// A job's spec, in the commit of its first placement or an earlier one.
    Spec { job: String, write: Write },
    /// A new placement; its capacity is taken already.
    Place {
        key: TaskKey,
        placement: Placement,
        write: Write,
    },
    /// A placement's new state (failed, lost, or succeeded when the global
    /// scheduler could not be told), or the delete of a succeeded one the
    /// global scheduler has acknowledged.
    State { key: TaskKey, write: Write },
    /// Removes what is stored of a job (deleted) or of one placement (taken
    /// back); retried until it is in.
    Delete { write: Write },
}

impl Change {
    pub fn write(&self) -> &Write {
        match self {
            Change::Spec { write, .. }
            | Change::Place { write, .. }
            | Change::State { write, .. }
            | Change::Delete { write } => write,
        }
    }
}
