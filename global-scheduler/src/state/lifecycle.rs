//! Tasks and jobs over time: failed and lost tasks start again after their
//! backoff or end failed; cancel; delete; jobs past their
//! `ttl_after_finished`; tasks taken back from clusters that stay down;
//! clusters deleted for good. The rules are `sched_core::lifecycle`'s.
//!
//! A cancel writes the job's record only: tasks that were not on a machine
//! then are cancelled in memory, and read back as cancelled after a
//! restart (see `admission::load_tasks`); tasks on machines end cancelled
//! when their cluster reports them stopped.

use std::time::Instant;

use sched_core::cluster::ClusterId;
use sched_core::job::JobId;
use sched_core::lifecycle::{Retry, Span};
use sched_store::{Expect, Revision, Write};

use super::history;
use super::{Event, EventKind, JobEntry, State, TaskChange, TaskEntry};
use crate::error::ServiceError;
use crate::records::{now_unix_ms, JobRecord, TaskState};

impl State {
    /// Puts a pending task where it waits: the backoff set while its retry
    /// time is ahead, else the queue (as a hand-back when `hand_back`, which
    /// frees the capacity it was promised).
    pub(super) fn enqueue(
        &mut self,
        id: JobId,
        priority: u32,
        index: u32,
        t: &TaskEntry,
        hand_back: bool,
    ) {
        let now_ms = self.now_ms();
        let ahead = t.retry_at.map_or(0, |at| at - now_unix_ms());
        if ahead > 0 {
            self.waiting.insert((now_ms + ahead as u64, id, index));
        } else if hand_back {
            self.queue
                .hand_back(id, priority, index, &t.handed_back, now_ms);
        } else {
            self.queue.add(id, priority, index, &t.handed_back);
        }
    }

    /// Moves the tasks whose backoff is over into the queue; true if any.
    pub fn release_due(&mut self) -> bool {
        let now_ms = self.now_ms();
        let mut any = false;
        while let Some(&(at, id, index)) = self.waiting.first() {
            if at > now_ms {
                break;
            }
            self.waiting.pop_first();
            let Some(j) = self.names.get(&id).and_then(|n| self.jobs.get(n)) else {
                continue;
            };
            let Some(t) = j.tasks.get(index as usize) else {
                continue;
            };
            if t.state == TaskState::Pending && !j.record.cancelled {
                let priority = j.record.priority;
                let handed_back = t.handed_back.clone();
                self.queue.add(id, priority, index, &handed_back);
                any = true;
            }
        }
        if any {
            self.queue.mark_rescan();
        }
        any
    }

    /// An attempt of a task of `j` ended badly (`what`; `lost` if its
    /// machine went): decides, in `entry`, whether it starts again after its
    /// backoff or ends failed, and returns the event that says so. A
    /// cancelled job's task ends cancelled.
    pub(super) fn after_attempt(
        &self,
        j: &JobEntry,
        entry: &mut TaskEntry,
        lost: bool,
        what: String,
    ) -> (EventKind, String) {
        let now = now_unix_ms();
        if j.record.cancelled {
            entry.state = TaskState::Cancelled;
            entry.ended = Some(now);
            entry.reason = "stopped: its job was cancelled".to_string();
            return (EventKind::Cancelled, "stopped (job cancelled)".to_string());
        }
        let rules = self.policy.lifecycle.restart(&j.record.restart);
        let attempt = entry.attempts.max(1);
        match rules.after(attempt, lost) {
            Retry::After(wait) => {
                entry.state = TaskState::Pending;
                entry.cluster = None;
                entry.machine = None;
                entry.gpus.clear();
                entry.handed_back.clear();
                entry.retry_at = Some(now + wait.ms() as i64);
                entry.reason = format!(
                    "attempt {attempt} of {} {what}; next attempt after {wait}",
                    rules.max_attempts
                );
                // A loss is told as one; a failure that will run again
                // as a restart.
                let kind = if lost {
                    EventKind::Lost
                } else {
                    EventKind::Restarting
                };
                (
                    kind,
                    format!("{what}; attempt {} after {wait} of backoff", attempt + 1),
                )
            }
            Retry::GiveUp(why) => {
                entry.state = TaskState::Failed;
                entry.ended = Some(now);
                entry.reason = format!("attempt {attempt} {what}; not started again: {why}");
                (
                    EventKind::Failed,
                    format!("{what}; not started again: {why}"),
                )
            }
        }
    }

    /// A task of `j` was evicted for higher-priority work (`why`, from its
    /// cluster, names the preemptor): it waits again, with its priority,
    /// after its restart backoff, however many attempts it has had (an
    /// eviction is not the task's failure, and Borg does not give up on
    /// preempted work). A cancelled job's task ends cancelled.
    pub(super) fn after_preemption(
        &self,
        j: &JobEntry,
        entry: &mut TaskEntry,
        why: &str,
    ) -> (EventKind, String) {
        let now = now_unix_ms();
        if j.record.cancelled {
            entry.state = TaskState::Cancelled;
            entry.ended = Some(now);
            entry.reason = "stopped: its job was cancelled".to_string();
            return (EventKind::Cancelled, "stopped (job cancelled)".to_string());
        }
        let rules = self.policy.lifecycle.restart(&j.record.restart);
        let wait = rules.delay(entry.attempts.max(1));
        entry.state = TaskState::Pending;
        entry.cluster = None;
        entry.machine = None;
        entry.gpus.clear();
        entry.handed_back.clear();
        entry.retry_at = Some(now + wait.ms() as i64);
        entry.preempted = true;
        entry.reason = format!("{why}; next attempt after {wait}");
        (EventKind::Preempted, why.to_string())
    }

    // ---- cancel ----

    /// The write that marks `name` cancelled; `None` when it already is
    /// (cancel is idempotent). A finished job is not changed.
    pub fn cancel_write(&self, name: &str) -> Result<Option<(JobRecord, Write)>, ServiceError> {
        let j = self.jobs.get(name).ok_or_else(|| ServiceError::NotFound {
            what: "job",
            name: name.to_string(),
        })?;
        if j.record.cancelled {
            return Ok(None);
        }
        if j.is_finished() {
            return Err(ServiceError::FailedPrecondition(format!(
                "job {name:?} has already finished ({}); there is nothing to cancel (delete it with `schedctl delete job {name}`)",
                Self::job_state(j).as_str_name().trim_start_matches("JOB_STATE_").to_lowercase()
            )));
        }
        let mut record = j.record.clone();
        record.cancelled = true;
        let value = serde_json::to_vec(&record).expect("job records serialize");
        let write = Write::put(self.keys.job(name), value, Expect::ModRevision(j.rev));
        Ok(Some((record, write)))
    }

    /// Applies a committed cancel: tasks not on a machine are cancelled at
    /// once (and leave the pending count); returns the clusters to tell, which
    /// hold its tasks on machines or are about to.
    pub fn apply_cancel(&mut self, record: JobRecord, rev: Revision) -> Vec<ClusterId> {
        let now = now_unix_ms();
        let name = record.name.clone();
        let Some(j) = self.jobs.get_mut(&name) else {
            return Vec::new();
        };
        j.record = record;
        j.rev = rev;
        let id = j.job.id;
        self.queue.remove_job(id);
        self.waiting.retain(|w| w.1 != id);
        let Some(j) = self.jobs.get_mut(&name) else {
            return Vec::new();
        };
        let mut clusters = Vec::new();
        let (mut now_cancelled, mut stopping) = (0u32, 0u32);
        for t in j.tasks.iter_mut() {
            if let Some(c) = t.cluster {
                if !t.state.is_final() {
                    clusters.push(c);
                }
            }
            if t.state.is_final() {
                continue;
            }
            if t.state.is_on_machine() {
                stopping += 1;
                continue;
            }
            t.state = TaskState::Cancelled;
            t.ended = Some(now);
            t.retry_at = None;
            t.reason = "cancelled before it ran".to_string();
            now_cancelled += 1;
        }
        j.open -= now_cancelled;
        if j.open == 0 {
            j.finished_at = Some(now);
        }
        clusters.sort();
        clusters.dedup();
        let name = j.record.name.clone();
        let text = if stopping == 0 {
            format!("job cancelled: {now_cancelled} task(s) cancelled")
        } else {
            format!(
                "job cancelled: {now_cancelled} task(s) cancelled at once, {stopping} being stopped"
            )
        };
        history::push(
            &mut self.log,
            j,
            Event::new(&name, EventKind::Cancelled, text),
        );
        clusters
    }

    // ---- delete ----

    /// The writes that remove `name` and its tasks; refused while the job
    /// has unfinished tasks, unless `force` (after a cancel: its clusters
    /// stop what still runs).
    pub fn delete_writes(&self, name: &str, force: bool) -> Result<Vec<Write>, ServiceError> {
        let j = self.jobs.get(name).ok_or_else(|| ServiceError::NotFound {
            what: "job",
            name: name.to_string(),
        })?;
        if !j.is_finished() && !force {
            return Err(ServiceError::FailedPrecondition(format!(
                "job {name:?} has {} unfinished task(s); cancel it first, or delete with --force",
                j.open
            )));
        }
        Ok(vec![
            Write::delete(self.keys.job(name), Expect::ModRevision(j.rev)),
            Write::delete_prefix(self.keys.job_tasks(name)),
            Write::delete_prefix(self.keys.job_events(name)),
        ])
    }

    /// Forgets a deleted job; its name is free from now on.
    pub fn apply_delete(&mut self, name: &str, why: &str) {
        let Some(j) = self.jobs.remove(name) else {
            return;
        };
        let id = j.job.id;
        // Its records went with its keys; a job of the same name may
        // number its own from 1 again.
        let prefix = self.keys.job_tasks(name);
        self.garbage.retain(|k| !k.starts_with(&prefix));
        self.names.remove(&id);
        self.queue.remove_job(id);
        self.waiting.retain(|w| w.1 != id);
        // The job's history goes with it (its keys went in the delete's
        // commit); watchers hear of the end.
        self.log.forget(&j);
        self.log.note(
            None,
            Event::new(name, EventKind::Deleted, format!("job deleted ({why})")),
        );
    }

    /// Finished jobs whose `ttl_after_finished` has passed at `now` (Unix
    /// ms), oldest first, at most `max`.
    pub fn expired(&self, now: i64, max: usize) -> Vec<String> {
        let lifecycle = &self.policy.lifecycle;
        let mut out: Vec<(i64, String)> = self
            .jobs
            .values()
            .filter_map(|j| {
                let done = j.finished_at?;
                let ttl = lifecycle.ttl(j.record.ttl_after_finished);
                let due = done.saturating_add(ttl.ms() as i64);
                (due <= now).then(|| (due, j.record.name.clone()))
            })
            .collect();
        out.sort();
        out.truncate(max);
        out.into_iter().map(|(_, n)| n).collect()
    }

    // ---- clusters that stay down ----

    /// Clusters down for longer than the policy's `cluster_down_timeout`
    /// (counted from their last heartbeat, or from `since` for clusters
    /// not heard from since this scheduler started) that still hold
    /// unfinished tasks. Each is looked at until its tasks are taken back
    /// (then marked swept, until it comes back).
    pub fn gone_clusters(&self, now: Instant, since: Instant) -> Vec<ClusterId> {
        let limit = self.registry.heartbeat_timeout()
            + self.policy.lifecycle.cluster_down_timeout.as_duration();
        self.registry
            .entries()
            .iter()
            .filter(|e| !e.summary.up && !e.removed && !e.swept)
            .filter(|e| now.saturating_duration_since(e.last_heartbeat.unwrap_or(since)) > limit)
            .map(|e| e.summary.id)
            .collect()
    }

    /// The changes that take every unfinished task back from `cluster`:
    /// tasks that were on its machines count as lost with them (the
    /// restart rules and backoff apply); tasks it had not placed go back
    /// to pending at once. Each write is guarded by the task's revision, and
    /// the cluster learns on its return that it no longer holds them.
    pub fn take_back_changes(&self, cluster: ClusterId, why: &str) -> Vec<TaskChange> {
        let mut out = Vec::new();
        let text = format!(
            "taken back from cluster {}: {why}",
            self.registry.name(cluster)
        );
        for j in self.jobs.values() {
            for (i, t) in j.tasks.iter().enumerate() {
                if t.cluster != Some(cluster) || t.state.is_final() {
                    continue;
                }
                let mut entry = t.clone();
                let event = if t.state.is_on_machine() || t.state == TaskState::Lost {
                    let (kind, what) = self.after_attempt(j, &mut entry, true, text.clone());
                    (
                        if kind == EventKind::Lost {
                            EventKind::TakenBack
                        } else {
                            kind
                        },
                        what,
                    )
                } else if j.record.cancelled {
                    entry.state = TaskState::Cancelled;
                    entry.ended = Some(now_unix_ms());
                    (
                        EventKind::Cancelled,
                        "cancelled (job cancelled)".to_string(),
                    )
                } else {
                    entry.state = TaskState::Pending;
                    entry.cluster = None;
                    entry.machine = None;
                    entry.gpus.clear();
                    (EventKind::TakenBack, text.clone())
                };
                out.push(self.change(&j.record.name, i as u32, t, entry, Some(event)));
            }
        }
        out
    }

    /// How long a deleted job's task directories stay on the nodes.
    pub fn task_dir_retention(&self) -> Span {
        self.policy.lifecycle.task_dir_retention
    }
}
