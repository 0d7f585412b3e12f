//! What happened to each job: a bounded history per job for `describe`, and
//! a broadcast for `watch`.

use std::fmt;

use tokio::sync::broadcast;

use super::{JobEntry, State};

/// Events kept per job for `describe`; older ones are dropped.
pub const EVENTS_PER_JOB: usize = 64;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    Submitted,
    /// State read back from the store by a new leader.
    Recovered,
    Assigned,
    HandedBack,
    Placed,
    Succeeded,
    Failed,
    Lost,
    Cancelled,
    /// No cluster can take some pending tasks (the message says why).
    Unschedulable,
}

impl EventKind {
    /// The name the API and `describe` show.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Recovered => "recovered",
            EventKind::Assigned => "assigned",
            EventKind::HandedBack => "handed_back",
            EventKind::Placed => "placed",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Lost => "lost",
            EventKind::Cancelled => "cancelled",
            EventKind::Unschedulable => "unschedulable",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub unix_ms: i64,
    pub job: String,
    pub kind: EventKind,
    pub message: String,
}

impl Event {
    pub fn new(job: &str, kind: EventKind, message: String) -> Self {
        Event {
            unix_ms: crate::now_unix_ms(),
            job: job.to_string(),
            kind,
            message,
        }
    }
}

impl State {
    /// Records an event of `job` (if it exists) and tells the watchers.
    pub fn push_job_event(&mut self, job: &str, kind: EventKind, message: String) {
        if let Some(j) = self.jobs.get_mut(job) {
            push(&self.events, j, Event::new(job, kind, message));
        }
    }
}

/// Keeps `e` in `j`'s history and tells the watchers.
pub(super) fn push(tx: &broadcast::Sender<Event>, j: &mut JobEntry, e: Event) {
    if j.events.len() == EVENTS_PER_JOB {
        j.events.pop_front();
    }
    j.events.push_back(e.clone());
    // No watcher is not an error.
    let _ = tx.send(e);
}
