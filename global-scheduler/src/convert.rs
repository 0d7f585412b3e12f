//! Conversions between the scheduler's records and the API's messages, in
//! one place.

use sched_proto::pb;

pub use sched_proto::convert::{from_pb as from_pb_resources, to_pb as to_pb_resources};

use crate::records::TaskState;
use crate::state::{Event, JobEntry};

pub fn to_pb_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Placed => pb::TaskState::Placed,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Lost => pb::TaskState::Lost,
    }
}

pub fn to_pb_event(e: &Event) -> pb::Event {
    pb::Event {
        unix_ms: e.unix_ms,
        job: e.job.clone(),
        kind: e.kind.as_str().to_string(),
        message: e.message.clone(),
    }
}

/// The assignment of `indices` of `j`, with everything the cluster needs to
/// place and start them.
pub fn assignment_message(j: &JobEntry, indices: Vec<u32>) -> pb::Assignment {
    pb::Assignment {
        job: j.record.name.clone(),
        indices,
        request: Some(to_pb_resources(&j.job.spec.request)),
        constraints: j.record.constraints.clone().into_iter().collect(),
        command: j.record.command.clone(),
        priority: j.record.priority,
    }
}
