//! Tasks: the unit of placement, one of a job's N identical copies.

use std::fmt;

use serde::Serialize;

use crate::job::JobId;

/// A task: the job it belongs to and its index within the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TaskId {
    pub job: JobId,
    pub index: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job, self.index)
    }
}
