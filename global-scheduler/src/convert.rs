//! Conversions between the scheduler's records and the API's messages, in
//! one place.

use sched_proto::pb;

pub use sched_proto::convert::{from_pb as from_pb_resources, to_pb as to_pb_resources};

use crate::event::{Event, EventKind};
use crate::records::{JobRecord, TaskState};

pub fn to_pb_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Placed => pb::TaskState::Placed,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Lost => pb::TaskState::Lost,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}

pub fn to_pb_event(e: &Event) -> pb::Event {
    pb::Event {
        event_time: Some(sched_proto::wkt::timestamp(e.unix_ms)),
        job: e.job.clone(),
        kind: to_pb_event_kind(e.kind) as i32,
        message: e.message.clone(),
        cursor: e.cursor,
        tasks: e.tasks.clone(),
    }
}

pub fn to_pb_event_kind(k: EventKind) -> pb::EventKind {
    match k {
        EventKind::Submitted => pb::EventKind::Submitted,
        EventKind::Recovered => pb::EventKind::Recovered,
        EventKind::Assigned => pb::EventKind::Assigned,
        EventKind::HandedBack => pb::EventKind::HandedBack,
        EventKind::Placed => pb::EventKind::Placed,
        EventKind::Succeeded => pb::EventKind::Succeeded,
        EventKind::Failed => pb::EventKind::Failed,
        EventKind::Lost => pb::EventKind::Lost,
        EventKind::Cancelled => pb::EventKind::Cancelled,
        EventKind::Unschedulable => pb::EventKind::Unschedulable,
        EventKind::Restarting => pb::EventKind::Restarting,
        EventKind::Deleted => pb::EventKind::Deleted,
        EventKind::TakenBack => pb::EventKind::TakenBack,
        EventKind::Running => pb::EventKind::Running,
        EventKind::Preempted => pb::EventKind::Preempted,
        EventKind::PolicyChanged => pb::EventKind::PolicyChanged,
    }
}

/// The assignment of `indices` of job `r`, with everything the cluster
/// needs to place and start them.
pub fn assignment_message(r: &JobRecord, indices: Vec<u32>) -> pb::Assignment {
    pb::Assignment {
        job: r.name.clone(),
        indices,
        request: Some(to_pb_resources(&r.request.into())),
        constraints: r.constraints.clone().into_iter().collect(),
        command: r.command.clone(),
        priority: r.priority,
    }
}
