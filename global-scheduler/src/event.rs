//! A job's events: what happened to it, typed. The state keeps a bounded
//! history of them per job and broadcasts them to watchers
//! ([`state::history`](crate::state::history)); the API carries them as
//! `clustersched.v1.Event`.

use std::fmt;

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
    /// Tasks failed or were lost and start again after their backoff.
    Restarting,
    /// The job was deleted (by a user or its `ttl_after_finished`).
    Deleted,
    /// Tasks taken back from a cluster that stayed down.
    TakenBack,
    Running,
    /// Tasks evicted for higher-priority work.
    Preempted,
    /// Not a job's: the scheduling policy changed (`job` is empty).
    PolicyChanged,
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
            EventKind::Restarting => "restarting",
            EventKind::Deleted => "deleted",
            EventKind::TakenBack => "taken_back",
            EventKind::Running => "running",
            EventKind::Preempted => "preempted",
            EventKind::PolicyChanged => "policy_changed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ALL.iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// Every kind, for parsing stored events.
const ALL: [EventKind; 16] = [
    EventKind::Submitted,
    EventKind::Recovered,
    EventKind::Assigned,
    EventKind::HandedBack,
    EventKind::Placed,
    EventKind::Succeeded,
    EventKind::Failed,
    EventKind::Lost,
    EventKind::Cancelled,
    EventKind::Unschedulable,
    EventKind::Restarting,
    EventKind::Deleted,
    EventKind::TakenBack,
    EventKind::Running,
    EventKind::Preempted,
    EventKind::PolicyChanged,
];

/// One event of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub unix_ms: i64,
    pub job: String,
    pub kind: EventKind,
    pub message: String,
    /// Its place in the scheduler's history (over all jobs), given when it
    /// is recorded ([`state::history`](crate::state::history)); 0 until then.
    pub cursor: u64,
    /// The tasks a task event is about, in increasing order.
    pub tasks: Vec<u32>,
}

impl Event {
    pub fn new(job: &str, kind: EventKind, message: String) -> Self {
        Event {
            unix_ms: crate::records::now_unix_ms(),
            job: job.to_string(),
            kind,
            message,
            cursor: 0,
            tasks: Vec::new(),
        }
    }

    /// The same event about tasks `tasks`.
    pub fn with_tasks(mut self, mut tasks: Vec<u32>) -> Self {
        tasks.sort_unstable();
        tasks.dedup();
        self.tasks = tasks;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back() {
        for k in ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
        }
        assert!("nope".parse::<EventKind>().is_err());
    }
}
