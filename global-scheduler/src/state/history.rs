//! What happened to each job: a bounded history per job for `describe`,
//! kept in the store, and a broadcast for `watch`.
//!
//! Every event gets a cursor when it is recorded: one counter over all jobs,
//! which only grows, across failovers too (the store keeps the greatest one
//! given). Events go to the store in batches ([`crate::events`]) and reach
//! watchers only once stored, so a watcher never sees an event a new leader
//! would not have: resuming after the last cursor seen, on any leader, gives
//! every later event once.

use std::collections::{BTreeMap, VecDeque};

use sched_core::job::JobId;
use tokio::sync::broadcast;

use super::{JobEntry, State};
use crate::event::{Event, EventKind};

/// Events kept per job for `describe` and for resuming watches; older ones
/// are dropped (and their keys deleted).
pub const EVENTS_PER_JOB: usize = 64;

/// Live events a slow watcher may fall behind by before its stream ends
/// (it resumes from its cursor).
const WATCH_BUFFER: usize = 4096;

/// An event recorded, not yet stored: of job `id` (`None`: no job keeps it).
#[derive(Debug, Clone)]
pub struct Noted {
    pub id: Option<JobId>,
    pub event: Event,
}

/// The cursors, the events waiting for the store, the watchers.
#[derive(Debug)]
pub struct EventLog {
    /// The next cursor to give.
    next: u64,
    /// Recorded and not yet taken by the writer.
    queued: Vec<Noted>,
    /// Taken by the writer, its commit not yet acknowledged.
    in_flight: Vec<Noted>,
    /// Every cursor up to this one is stored (or was never to be) and was
    /// sent to watchers.
    stored: u64,
    /// The greatest cursor handed to the writer.
    taken: u64,
    /// Stored (or being stored) events dropped from a job's history: their
    /// keys are deleted with the next batch.
    trimmed: Vec<(String, u64)>,
    /// Jobs whose every stored event must go (read back without their job,
    /// or deleted while a batch was in flight).
    gone: Vec<String>,
    /// The greatest cursor of any event no longer kept.
    dropped: u64,
    /// Events read back from the store, until their job is inserted.
    loaded: BTreeMap<String, Vec<Event>>,
    tx: broadcast::Sender<Event>,
    /// Wakes the writer: events are queued.
    wake: std::sync::Arc<tokio::sync::Notify>,
}

/// What the writer stores in one go.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events to put, with their job's name.
    pub put: Vec<Event>,
    /// Event keys to delete: `(job, cursor)`.
    pub delete: Vec<(String, u64)>,
    /// Jobs whose stored events all go, before the puts.
    pub gone: Vec<String>,
    /// The greatest cursor given and dropped, after this batch.
    pub next: u64,
    pub dropped: u64,
}

/// Why a watch cannot resume where it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("job {0:?} not found")]
    NotFound(String),
    /// Events after the cursor are no longer kept.
    #[error("cursor {since} is too old: events up to cursor {dropped} are no longer kept{of}; read the state again and watch without since")]
    Expired {
        since: u64,
        dropped: u64,
        of: String,
    },
    #[error("cursor {since} is ahead of the history (the newest event's is {newest})")]
    Ahead { since: u64, newest: u64 },
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    pub fn new() -> Self {
        EventLog {
            next: 1,
            queued: Vec::new(),
            in_flight: Vec::new(),
            stored: 0,
            taken: 0,
            trimmed: Vec::new(),
            gone: Vec::new(),
            dropped: 0,
            loaded: BTreeMap::new(),
            tx: broadcast::channel(WATCH_BUFFER).0,
            wake: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Gives `e` its cursor and queues it for the store (for job `id`'s
    /// history; `None`: sent to watchers only). Returns it with its cursor.
    pub fn note(&mut self, id: Option<JobId>, mut e: Event) -> Event {
        e.cursor = self.next;
        self.next += 1;
        self.queued.push(Noted {
            id,
            event: e.clone(),
        });
        self.wake.notify_one();
        e
    }

    /// A job's history dropped `cursor` (the oldest event).
    fn trim(&mut self, job: &str, cursor: u64) {
        self.dropped = self.dropped.max(cursor);
        // Queued events are simply not written; taken ones may be.
        if cursor <= self.taken {
            self.trimmed.push((job.to_string(), cursor));
        }
    }

    /// A deleted job's events: no longer kept. Their keys went with the
    /// job's delete, unless a batch holding some was in flight.
    pub(crate) fn forget(&mut self, j: &JobEntry) {
        if let Some(last) = j.events.back() {
            self.dropped = self.dropped.max(last.cursor);
        }
        self.dropped = self.dropped.max(j.events_dropped);
        let name = &j.record.name;
        if self
            .in_flight
            .iter()
            .any(|n| n.id == Some(j.job.id) && n.event.job == *name)
        {
            self.gone.push(name.clone());
        }
    }

    /// The writer's wake-up.
    pub fn wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// A receiver of every event stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Events read back from the store, with the marks the last leader
    /// left: cursors go on from there. Call before the jobs are inserted.
    pub fn load(&mut self, events: Vec<Event>, next: u64, dropped: u64) {
        let newest = events.iter().map(|e| e.cursor).max().unwrap_or(0);
        self.next = next.max(newest + 1).max(1);
        self.stored = self.next - 1;
        self.taken = self.stored;
        self.dropped = dropped;
        for e in events {
            self.loaded.entry(e.job.clone()).or_default().push(e);
        }
    }

    /// Job `name`'s history as read back, and the greatest cursor it no
    /// longer keeps.
    pub(crate) fn take_loaded(&mut self, name: &str) -> (VecDeque<Event>, u64) {
        let Some(mut events) = self.loaded.remove(name) else {
            return (VecDeque::new(), 0);
        };
        events.sort_by_key(|e| e.cursor);
        // Events before the last `submitted` are a deleted job's of the same
        // name that a batch in flight wrote after the delete: not this one's.
        if let Some(i) = events.iter().rposition(|e| e.kind == EventKind::Submitted) {
            for e in events.drain(..i) {
                self.trimmed.push((name.to_string(), e.cursor));
            }
        }
        let mut dropped = 0;
        while events.len() > EVENTS_PER_JOB {
            let e = events.remove(0);
            self.trimmed.push((name.to_string(), e.cursor));
            dropped = e.cursor;
        }
        if events.len() == EVENTS_PER_JOB {
            // A full history may have dropped some before.
            dropped = dropped.max(events[0].cursor - 1);
        }
        (events.into(), dropped)
    }

    /// Once every job is inserted: stored events of jobs that do not exist
    /// go with the next batch.
    pub(crate) fn loaded_done(&mut self) {
        let orphans = std::mem::take(&mut self.loaded);
        for (name, events) in orphans {
            if let Some(max) = events.iter().map(|e| e.cursor).max() {
                self.dropped = self.dropped.max(max);
            }
            self.gone.push(name);
        }
    }

    /// Whether the writer has anything to do.
    pub fn has_batch(&self) -> bool {
        !self.queued.is_empty() || !self.trimmed.is_empty() || !self.gone.is_empty()
    }
}

impl State {
    /// Records an event of `job` (if it exists) and tells the watchers once
    /// it is stored.
    pub fn push_job_event(&mut self, job: &str, kind: EventKind, message: String) {
        self.push_task_event(job, kind, message, Vec::new());
    }

    /// Records an event about tasks `tasks` of `job`.
    pub fn push_task_event(
        &mut self,
        job: &str,
        kind: EventKind,
        message: String,
        tasks: Vec<u32>,
    ) {
        if let Some(j) = self.jobs.get_mut(job) {
            push(
                &mut self.log,
                j,
                Event::new(job, kind, message).with_tasks(tasks),
            );
        }
    }

    /// The event log (cursors, watchers, the writer's wake-up).
    pub fn events(&self) -> &EventLog {
        &self.log
    }

    /// Events read back from the store (before [`State::load`]).
    pub fn load_events(&mut self, events: Vec<Event>, next: u64, dropped: u64) {
        self.log.load(events, next, dropped);
    }

    /// [`EventLog::loaded_done`], for tests that insert jobs by hand.
    #[cfg(test)]
    pub(crate) fn events_loaded_for_tests(&mut self) {
        self.log.loaded_done();
    }

    /// What the writer stores next (and marks it taken).
    pub fn take_batch(&mut self) -> Batch {
        let log = &mut self.log;
        let queued = std::mem::take(&mut log.queued);
        let mut put = Vec::new();
        for n in &queued {
            let Some(id) = n.id else { continue };
            // Still its job's (not deleted, nor a new job of the same name)
            // and still kept.
            let kept = self.jobs.get(&n.event.job).is_some_and(|j| {
                j.job.id == id && j.events.front().is_some_and(|f| f.cursor <= n.event.cursor)
            });
            if kept {
                put.push(n.event.clone());
            }
        }
        log.taken = log.next - 1;
        log.in_flight.extend(queued);
        Batch {
            put,
            delete: std::mem::take(&mut log.trimmed),
            gone: std::mem::take(&mut log.gone),
            next: log.next,
            dropped: log.dropped,
        }
    }

    /// The writer's batch is stored: its events go to the watchers.
    pub fn batch_stored(&mut self) {
        let log = &mut self.log;
        for n in std::mem::take(&mut log.in_flight) {
            log.stored = log.stored.max(n.event.cursor);
            // No watcher is not an error.
            let _ = log.tx.send(n.event);
        }
        log.stored = log.stored.max(log.taken);
    }

    /// The writer's batch failed: it is taken again with the next one.
    pub fn batch_failed(&mut self, batch: Batch) {
        let log = &mut self.log;
        let mut again = std::mem::take(&mut log.in_flight);
        again.append(&mut log.queued);
        log.queued = again;
        let mut delete = batch.delete;
        delete.append(&mut log.trimmed);
        log.trimmed = delete;
        let mut gone = batch.gone;
        gone.append(&mut log.gone);
        log.gone = gone;
    }

    /// For a watch from `since` (of `job`, or every job when empty): the
    /// stored events after it, in cursor order, and a receiver of every
    /// later one (taken together, so none is missed or sent twice).
    pub fn resume(
        &self,
        job: &str,
        since: Option<u64>,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>), ResumeError> {
        let entry = if job.is_empty() {
            None
        } else {
            Some(
                self.jobs
                    .get(job)
                    .ok_or_else(|| ResumeError::NotFound(job.to_string()))?,
            )
        };
        let rx = self.log.subscribe();
        let Some(since) = since else {
            return Ok((Vec::new(), rx));
        };
        let stored = self.log.stored;
        if since > stored {
            return Err(ResumeError::Ahead {
                since,
                newest: stored,
            });
        }
        let after = |e: &&Event| e.cursor > since && e.cursor <= stored;
        let replay = match entry {
            Some(j) => {
                if since < j.events_dropped {
                    return Err(ResumeError::Expired {
                        since,
                        dropped: j.events_dropped,
                        of: format!(" for job {job:?}"),
                    });
                }
                j.events.iter().filter(after).cloned().collect()
            }
            None => {
                if since < self.log.dropped {
                    return Err(ResumeError::Expired {
                        since,
                        dropped: self.log.dropped,
                        of: String::new(),
                    });
                }
                let mut all: Vec<Event> = self
                    .jobs
                    .values()
                    .flat_map(|j| j.events.iter().filter(after).cloned())
                    .collect();
                all.sort_by_key(|e| e.cursor);
                all
            }
        };
        Ok((replay, rx))
    }
}

/// Keeps `e` in `j`'s history (dropping the oldest past
/// [`EVENTS_PER_JOB`]) and queues it for the store and the watchers.
pub(super) fn push(log: &mut EventLog, j: &mut JobEntry, e: Event) {
    let e = log.note(Some(j.job.id), e);
    if j.events.len() == EVENTS_PER_JOB {
        if let Some(old) = j.events.pop_front() {
            j.events_dropped = old.cursor;
            log.trim(&j.record.name, old.cursor);
        }
    }
    j.events.push_back(e);
}
