//! The global scheduler's view of the world: jobs, their tasks, clusters.
//!
//! Plain data and decisions, no I/O: the [`engine`](crate::engine) asks for
//! writes (`*_changes`, `*_write`), commits them to the store, and only then
//! applies them here (`apply*`). So memory never runs ahead of etcd, and a
//! crash between the two loses nothing that was acknowledged. One
//! exception, by design: a task's progress on its machine (`placed`,
//! `running`) is kept in memory only; its key says `assigned` until the
//! task ends. The cluster holds that progress (its placement key and its
//! node), and its resync on every (re)connection reports it again to
//! whichever scheduler leads, so a new leader learns it without a write
//! per step (etcd's write rate bounds throughput).
//!
//! - [`admission`]: submissions checked against the world, jobs added, the
//!   state read back from the store.
//! - [`transitions`]: scheduling passes (the decision is
//!   `sched_core::assign`), task reports and hand-backs.
//! - [`lifecycle`]: restarts with backoff, cancel, delete, jobs past their
//!   `ttl_after_finished`, tasks taken back from clusters that stay down.
//! - [`history`]: what happened to each job, for `describe` and `watch`.
//! - [`explain`]: job views and why tasks are where they are.

pub mod admission;
pub mod explain;
pub mod history;
pub mod lifecycle;
pub mod transitions;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use sched_core::assign::PendingQueue;
use sched_core::cluster::ClusterId;
use sched_core::job::{Job, JobId};
use sched_core::policy::Policy;
use sched_store::{Expect, Revision, Write};

pub use crate::event::{Event, EventKind};
pub use sched_core::assign::HAND_BACK_RETRY_MS;

use crate::keys::Keys;
use crate::records::{JobRecord, TaskRecord, TaskState};
use crate::registry::Registry;

/// One task as the scheduler tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEntry {
    pub state: TaskState,
    pub cluster: Option<ClusterId>,
    pub machine: Option<String>,
    /// The GPU devices of its placement on `machine` (`0+1`, `3:460`).
    pub gpus: String,
    pub exit_code: Option<i32>,
    pub handed_back: Vec<ClusterId>,
    /// Attempts started (placements on a machine).
    pub attempts: u32,
    /// Pending after a failure: not before this (Unix ms).
    pub retry_at: Option<i64>,
    /// Why it is in its state, when there is more to say.
    pub reason: String,
    /// When it reached a final state (Unix ms).
    pub ended: Option<i64>,
    /// Pending because a task of a higher band evicted it (`reason` says
    /// which); shown as `preempted` until it is assigned again.
    pub preempted: bool,
    /// `mod_revision` of the task's key; 0 when it has none.
    pub rev: Revision,
    /// The assignment record that assigned it, while that is newer than
    /// its key: its number (0: none) and revision.
    pub assignment: u32,
    pub arev: Revision,
}

impl TaskEntry {
    fn pending() -> Self {
        TaskEntry {
            state: TaskState::Pending,
            cluster: None,
            machine: None,
            gpus: String::new(),
            exit_code: None,
            handed_back: Vec::new(),
            attempts: 0,
            retry_at: None,
            reason: String::new(),
            ended: None,
            preempted: false,
            rev: 0,
            assignment: 0,
            arev: 0,
        }
    }

    /// The task as a pass hands it to `cluster` (what an assignment record
    /// says of it, written or read back).
    fn assigned_to(&self, cluster: Option<ClusterId>) -> TaskEntry {
        TaskEntry {
            state: TaskState::Assigned,
            cluster,
            retry_at: None,
            preempted: false,
            ..self.clone()
        }
    }

    /// Which stored version of the task memory holds: its key's revision
    /// and its assignment record's.
    pub fn version(&self) -> (Revision, Revision) {
        (self.rev, self.arev)
    }

    /// The state the API shows: a pending task that was evicted is
    /// `preempted`.
    pub fn shown_state(&self) -> sched_proto::pb::TaskState {
        if self.preempted && self.state == TaskState::Pending {
            return sched_proto::pb::TaskState::Preempted;
        }
        crate::convert::to_pb_state(self.state)
    }

    fn expect(&self) -> Expect {
        if self.rev == 0 {
            Expect::Absent
        } else {
            Expect::ModRevision(self.rev)
        }
    }
}

/// One job.
#[derive(Debug, Clone)]
pub struct JobEntry {
    pub job: Job,
    pub record: JobRecord,
    /// `mod_revision` of the job's key.
    pub rev: Revision,
    pub tasks: Vec<TaskEntry>,
    pub events: VecDeque<Event>,
    /// The greatest cursor of this job's events no longer kept (0: none
    /// dropped): a watch resuming from before it gets EXPIRED.
    pub events_dropped: u64,
    /// Tasks not in a final state.
    pub open: u32,
    /// When the last task reached a final state (Unix ms).
    pub finished_at: Option<i64>,
    /// The job's assignment records still in force, by number: how many
    /// tasks each still stands for.
    pub assignments: BTreeMap<u32, u32>,
    /// The number of its next assignment record.
    pub next_assignment: u32,
}

impl JobEntry {
    /// Every task succeeded, failed or was cancelled.
    pub fn is_finished(&self) -> bool {
        self.open == 0
    }
}

/// A task change, computed before the write and applied after it.
#[derive(Debug, Clone)]
pub struct TaskChange {
    pub job: String,
    pub index: u32,
    pub entry: TaskEntry,
    /// The write of the task's key; `None` for a change kept in memory only
    /// (a task on a machine is `placed` or `running`: its key keeps
    /// `assigned` until it ends, and the cluster's resync tells a new
    /// leader where it stands, see [`State::report_change`]).
    pub write: Option<Write>,
    /// For a pass's assignment: the number of the job's assignment record
    /// that makes it durable instead of a write of the task's key (the
    /// engine writes one record for the changes that share a number, see
    /// [`State::assignment_write`]).
    pub assignment: Option<u32>,
    /// For events: what happened to the task.
    pub event: Option<(EventKind, String)>,
}

pub struct State {
    keys: Keys,
    registry: Registry,
    policy: Policy,
    /// Quotas by tenant and band (the file's, then those set live).
    quotas: sched_core::quota::Quotas,
    jobs: BTreeMap<String, JobEntry>,
    /// Job names by id, for the queue.
    names: BTreeMap<JobId, String>,
    next_id: u32,
    /// Pending tasks and the rules that assign them.
    queue: PendingQueue,
    /// Pending tasks waiting out their restart backoff, by when they may go
    /// (queue clock): they join the queue then.
    waiting: BTreeSet<(u64, JobId, u32)>,
    /// The queue's clock: hand-back retries count from here (not persisted:
    /// a restarted scheduler retries them at once).
    epoch: Instant,
    /// Every event's cursor, the writes that persist them, the watchers.
    log: history::EventLog,
    /// Assignment records every task of which has a newer key since: to
    /// be deleted ([`State::take_garbage`]).
    garbage: Vec<String>,
}

impl State {
    pub fn new(keys: Keys, mut registry: Registry, policy: Policy) -> Self {
        registry.set_local_policy(policy.local.clone());
        State {
            keys,
            registry,
            policy,
            quotas: Default::default(),
            jobs: BTreeMap::new(),
            names: BTreeMap::new(),
            next_id: 0,
            queue: PendingQueue::new(),
            waiting: BTreeSet::new(),
            epoch: Instant::now(),
            log: history::EventLog::new(),
            garbage: Vec::new(),
        }
    }

    /// The keys of assignment records nothing stands on any more (every
    /// task they name was written since): deleting them is safe at any
    /// time, and a new leader finds any not deleted again.
    pub fn take_garbage(&mut self) -> Vec<String> {
        std::mem::take(&mut self.garbage)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, to record heartbeats and registrations. A change that
    /// frees capacity must be followed by [`State::mark_rescan`].
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Puts a validated policy in force for the next pass (every job with
    /// pending tasks is looked at again) and tells the watchers, with
    /// `message` saying what changed.
    pub fn set_policy(&mut self, policy: Policy, message: String) {
        self.registry.set_local_policy(policy.local.clone());
        self.policy = policy;
        self.queue.mark_rescan();
        // Not a job's event: no job's history keeps it.
        self.log
            .note(None, Event::new("", EventKind::PolicyChanged, message));
    }

    pub fn quotas(&self) -> &sched_core::quota::Quotas {
        &self.quotas
    }

    pub fn set_quotas(&mut self, quotas: sched_core::quota::Quotas) {
        self.quotas = quotas;
    }

    /// Sets (or removes) one quota.
    pub fn set_quota(&mut self, tenant: &str, band: &str, limit: Option<sched_core::quota::Limit>) {
        self.quotas.set(tenant, band, limit);
    }

    /// What `tenant`'s unfinished tasks in `band` request.
    pub fn usage(&self, tenant: &str, band: &str) -> sched_core::quota::Usage {
        let mut u = sched_core::quota::Usage::default();
        for j in self.jobs.values() {
            if j.record.tenant == tenant
                && self.policy.priority.band_name(j.record.priority) == band
            {
                u.add(&j.job.spec.request, u64::from(j.open));
            }
        }
        u
    }

    /// Whether jobs about to be admitted keep every tenant within its quota
    /// in their band (the lowest band has none); the first one over is
    /// named.
    pub fn check_quotas(
        &self,
        records: &[crate::records::JobRecord],
    ) -> Result<(), Box<sched_core::quota::Exceeded>> {
        if self.quotas.is_empty() {
            return Ok(());
        }
        let mut asked: BTreeMap<(&str, &str), sched_core::quota::Usage> = BTreeMap::new();
        for r in records {
            if self.policy.priority.is_lowest(r.priority) {
                continue;
            }
            let band = self.policy.priority.band_name(r.priority);
            asked
                .entry((r.tenant.as_str(), band))
                .or_default()
                .add(&r.request.into(), u64::from(r.tasks));
        }
        for ((tenant, band), more) in asked {
            if let Some(limit) = self.quotas.get(tenant, band) {
                limit.check(tenant, band, &self.usage(tenant, band), &more)?;
            }
        }
        Ok(())
    }

    pub fn job(&self, name: &str) -> Option<&JobEntry> {
        self.jobs.get(name)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobEntry> {
        self.jobs.values()
    }

    /// Jobs in the order of their names, from `start` on.
    pub fn jobs_from(&self, start: std::ops::Bound<&str>) -> impl Iterator<Item = &JobEntry> {
        self.jobs
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .map(|(_, j)| j)
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Tasks waiting for a cluster, over all jobs (bounded by the
    /// `max_pending_tasks` limit).
    pub fn pending_tasks(&self) -> u64 {
        self.queue.tasks() + self.waiting.len() as u64
    }

    /// Tasks of `j` waiting for a cluster.
    pub fn pending_of(&self, j: &JobEntry) -> u32 {
        self.queue.job_tasks(j.job.id)
    }

    /// Why the last pass could not assign `j`'s pending tasks.
    pub fn unschedulable(&self, j: &JobEntry) -> Option<&str> {
        self.queue.reason(j.job.id)
    }

    /// Makes the next pass look at every job with pending tasks (a cluster
    /// registered, came back, or freed capacity).
    pub fn mark_rescan(&mut self) {
        self.queue.mark_rescan();
    }

    /// Whether a scheduling pass has anything to look at.
    pub fn has_work(&self) -> bool {
        self.queue.has_work()
    }

    /// When the next task waiting out its backoff may go, if any.
    pub fn next_retry(&self) -> Option<std::time::Instant> {
        let &(at, _, _) = self.waiting.first()?;
        Some(self.epoch + std::time::Duration::from_millis(at))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn entry_of(&self, r: &TaskRecord, rev: Revision) -> TaskEntry {
        let id = |name: &String| self.registry.id(name);
        TaskEntry {
            state: r.state,
            cluster: r.cluster.as_ref().and_then(id),
            machine: r.machine.clone(),
            gpus: r.gpus.clone(),
            exit_code: r.exit_code,
            handed_back: r.handed_back.iter().filter_map(id).collect(),
            attempts: r.attempts,
            retry_at: r.retry_at_unix_ms,
            reason: r.reason.clone(),
            ended: r.ended_unix_ms,
            preempted: r.preempted,
            rev,
            assignment: 0,
            arev: 0,
        }
    }

    fn record_of(&self, t: &TaskEntry) -> TaskRecord {
        TaskRecord {
            state: t.state,
            cluster: t.cluster.map(|c| self.registry.name(c).to_string()),
            machine: t.machine.clone(),
            gpus: t.gpus.clone(),
            exit_code: t.exit_code,
            handed_back: t
                .handed_back
                .iter()
                .map(|&c| self.registry.name(c).to_string())
                .collect(),
            attempts: t.attempts,
            retry_at_unix_ms: t.retry_at,
            reason: t.reason.clone(),
            ended_unix_ms: t.ended,
            preempted: t.preempted,
        }
    }

    /// The change that turns `old` (task `index` of `job`) into `entry`.
    fn change(
        &self,
        job: &str,
        index: u32,
        old: &TaskEntry,
        entry: TaskEntry,
        event: Option<(EventKind, String)>,
    ) -> TaskChange {
        let value = serde_json::to_vec(&self.record_of(&entry))
            .expect("task records serialize: plain strings and integers");
        TaskChange {
            job: job.to_string(),
            index,
            write: Some(Write::put(self.keys.task(job, index), value, old.expect())),
            assignment: None,
            entry,
            event,
        }
    }

    /// The change that turns `old` into `entry` in memory only: its key is
    /// not written (its revision stays the one `old` was stored at).
    fn memory_change(
        &self,
        job: &str,
        index: u32,
        entry: TaskEntry,
        event: Option<(EventKind, String)>,
    ) -> TaskChange {
        TaskChange {
            job: job.to_string(),
            index,
            write: None,
            assignment: None,
            entry,
            event,
        }
    }
}

#[cfg(test)]
mod tests;
