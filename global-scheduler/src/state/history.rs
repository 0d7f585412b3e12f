//! What happened to each job: a bounded history per job for `describe`, and
//! a broadcast for `watch`.

use tokio::sync::broadcast;

use super::{JobEntry, State};
use crate::event::{Event, EventKind};

/// Events kept per job for `describe`; older ones are dropped.
pub const EVENTS_PER_JOB: usize = 64;

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
