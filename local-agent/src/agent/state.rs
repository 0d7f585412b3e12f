//! The local agent's decisions: the rules that span its parts. Each part
//! keeps its own rules and is tested alone:
//! - [`Inventory`]: machines, their capacity, the cell packing decides over;
//! - [`Intent`]: intended placements, with their revisions in the store;
//! - [`Specs`]: each job's spec, once per job;
//! - [`Queue`]: tasks waiting for a machine;
//! - [`Reports`]: what the global scheduler is to hear;
//! - [`NodeLinks`]: what the node agents are told.
//!
//! Plain data and decisions, no I/O: the planner ([`super::planner`])
//! writes the [`Change`]s to the store and only then lets nodes hear of
//! them ([`AgentState::applied`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sched_core::band::PriorityPolicy;
use sched_core::gpu::SlotsDisplay;
use sched_core::job::JobId;
use sched_core::pack::TaskGroup;
use sched_core::policy::LocalPolicy;
use sched_core::resources::Resources;
use sched_proto::pb;
use sched_store::{batch, KeyValue, Revision};
use tonic::Code;

use super::change::Change;
use super::intent::{self, Intent, Observed, Placement, PlacementRecord, PlacementState};
use super::inventory::Inventory;
use super::keys::{Keys, Stored, TaskKey};
use super::links::{NodeLinks, WorkSender};
use super::packing;
use super::queue::Queue;
use super::reports::{Outgoing, Reports};
use super::specs::{JobSpec, Specs};
use crate::error::AgentError;
use crate::to_pb;

pub struct AgentState {
    cluster: String,
    keys: Keys,
    policy: LocalPolicy,
    /// For one machine timeout after this, nodes are still registering:
    /// what does not fit yet is kept, not handed back.
    started: Instant,
    machine_timeout: Duration,
    inventory: Inventory,
    intent: Intent,
    specs: Specs,
    queue: Queue,
    reports: Reports,
    links: NodeLinks,
    /// Deletes due in the store (forgotten jobs and placements), written
    /// in commits of their own before any placement.
    deletions: Vec<sched_store::Write>,
    /// Which priorities may evict which ([`preemption`]).
    bands: PriorityPolicy,
}

impl AgentState {
    /// The packing policy from the next pass on.
    pub fn set_policy(&mut self, policy: LocalPolicy) {
        self.policy = policy;
    }

    pub fn new(
        cluster: &str,
        prefix: &str,
        policy: LocalPolicy,
        machine_timeout: Duration,
        now: Instant,
    ) -> Self {
        let keys = Keys::new(prefix, cluster);
        AgentState {
            cluster: cluster.to_string(),
            intent: Intent::new(keys.clone()),
            keys,
            policy,
            started: now,
            machine_timeout,
            inventory: Inventory::new(cluster, machine_timeout),
            specs: Specs::default(),
            queue: Queue::default(),
            reports: Reports::default(),
            links: NodeLinks::default(),
            deletions: Vec::new(),
            bands: PriorityPolicy::default(),
        }
    }

    /// The policy's priority bands, for preemption (the defaults unless
    /// given).
    pub fn with_bands(mut self, bands: PriorityPolicy) -> Self {
        self.bands = bands;
        self
    }

    /// The prefix of everything this agent stores.
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// Reads specs and placements back from the store (after a restart).
    /// Placements count on their machines once their nodes register again.
    pub fn load(&mut self, items: &[KeyValue]) -> Result<(), AgentError> {
        let bad = |kv: &KeyValue, reason: String| AgentError::BadRecord {
            key: kv.key.clone(),
            reason,
        };
        let mut older = BTreeMap::new();
        for kv in items {
            match self.keys.parse(&kv.key) {
                Some(Stored::Spec(job)) => {
                    let spec = serde_json::from_slice(&kv.value)
                        .map_err(|e| bad(kv, format!("not a job spec: {e}")))?;
                    self.specs.load(&job, spec, kv.mod_revision);
                }
                Some(Stored::Placement(k)) => {
                    let record: PlacementRecord = serde_json::from_slice(&kv.value)
                        .map_err(|e| bad(kv, format!("not a placement: {e}")))?;
                    // An older agent kept the spec in every placement.
                    if let Ok(spec) = serde_json::from_slice::<JobSpec>(&kv.value) {
                        older.entry(k.0.clone()).or_insert(spec);
                    }
                    self.intent.load(k, record, kv.mod_revision);
                }
                None => return Err(bad(kv, "not a key of this agent".to_string())),
            }
        }
        for (job, spec) in older {
            if self.specs.get(&job).is_none() {
                self.specs.learn(&job, spec);
            }
        }
        Ok(())
    }

    // ---- node agents ----

    /// A node (re)registers with its machines and the tasks it knows.
    pub fn register_node(
        &mut self,
        node: &str,
        address: &str,
        machines: &[pb::MachineSpec],
        tasks: &[pb::NodeTask],
        now: Instant,
    ) {
        let names = self.inventory.register(node, address, machines, now);
        self.links.reset(node);
        let on_node: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let keys = self.intent.active_on(&on_node);
        // Count the placements read back from the store on these machines.
        for k in &keys {
            self.count(k);
        }
        // Tasks of jobs this agent no longer knows were deleted while the
        // node was away: it stops and forgets them.
        let unknown: BTreeSet<String> = tasks
            .iter()
            .filter(|t| self.specs.get(&t.job).is_none() && self.intent.of_job(&t.job).is_empty())
            .map(|t| t.job.clone())
            .collect();
        if !unknown.is_empty() {
            self.links.forget_on(node, unknown.into_iter().collect());
        }
        // What the node runs vs what it should.
        let known: BTreeSet<TaskKey> = tasks.iter().map(|t| (t.job.clone(), t.index)).collect();
        for t in tasks {
            self.node_report(node, t);
        }
        let mut starts = Vec::new();
        for k in keys.into_iter().filter(|k| !known.contains(k)) {
            let Some(p) = self.intent.get(&k) else {
                continue;
            };
            match p.record.state {
                // Persisted, never started (or the start was lost): start it.
                PlacementState::Placed => match self.start_message(&k, &p.record) {
                    Some(start) => starts.push(start),
                    None => self.lose(&k),
                },
                // It ran there and the node no longer has it.
                PlacementState::Running => self.lose(&k),
                _ => {}
            }
        }
        self.links.start(node, starts);
    }

    /// Counts a placement read back from the store on its machine.
    fn count(&mut self, k: &TaskKey) {
        let Some(p) = self.intent.get(k) else {
            return;
        };
        let Some(spec) = self.specs.get(&k.0) else {
            return;
        };
        if p.counted.is_some() || !p.record.state.is_active() {
            return;
        }
        let request = spec.request();
        // The devices it was placed on, never others: the task may be
        // running on them.
        if let Some((id, gpus)) = self
            .inventory
            .take(&p.record.machine, &request, &p.record.gpus)
        {
            self.intent.count(k, id, request, gpus);
        } else {
            tracing::warn!(job = %k.0, index = k.1, machine = %p.record.machine, "a stored placement does not fit its machine (or its GPU devices) any more");
        }
    }

    /// False asks the node to register again: it is unknown or lost, or
    /// work is waiting for it with no open stream to carry it (the stream
    /// broke): registering again reopens the stream and resends the work.
    pub fn heartbeat(&mut self, node: &str, now: Instant) -> bool {
        self.inventory.heartbeat(node, now) && !self.links.stranded(node)
    }

    pub fn open_work(&mut self, node: &str, tx: WorkSender) -> Result<(), AgentError> {
        if !self.inventory.is_registered(node) || !self.links.open(node, tx) {
            return Err(AgentError::NotRegistered(node.to_string()));
        }
        Ok(())
    }

    pub fn node_reports(&mut self, node: &str, tasks: &[pb::NodeTask]) -> Result<(), AgentError> {
        if !self.inventory.is_registered(node) {
            return Err(AgentError::NotRegistered(node.to_string()));
        }
        for t in tasks {
            self.node_report(node, t);
        }
        Ok(())
    }

    fn node_report(&mut self, node: &str, t: &pb::NodeTask) {
        let k = (t.job.clone(), t.index);
        let state = pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified);
        match self
            .intent
            .observe(&k, t.attempt, &t.machine, state, t.exit_code, &t.reason)
        {
            Observed::Stale if state == pb::TaskState::Running => {
                tracing::warn!(job = %t.job, index = t.index, machine = %t.machine, attempt = t.attempt, "stopping a task that is not placed here");
                let stop = pb::TaskStop {
                    job: t.job.clone(),
                    index: t.index,
                    machine: t.machine.clone(),
                };
                self.links.stop(node, stop);
            }
            Observed::Stale | Observed::Unchanged => {}
            Observed::Lost => self.lose(&k),
            Observed::Changed { state, freed } => {
                if let Some((id, request, gpus)) = freed {
                    self.inventory.release(id, &request, &gpus);
                }
                let gpus = self
                    .intent
                    .get(&k)
                    .map(|p| SlotsDisplay(&p.record.gpus).to_string())
                    .unwrap_or_default();
                self.reports.push(pb::TaskReport {
                    job: k.0,
                    index: k.1,
                    state: state.to_pb() as i32,
                    machine: t.machine.clone(),
                    exit_code: t.exit_code,
                    reason: t.reason.clone(),
                    gpus,
                });
            }
        }
    }

    /// Nodes silent for the timeout are lost, with their machines; their
    /// tasks go back to the queue. After a restart, placements on machines
    /// that never came back are lost too.
    pub fn expire(&mut self, now: Instant) {
        for lost in self.inventory.expire(now) {
            self.links.close(&lost.node);
            let on: BTreeSet<&str> = lost.machines.iter().map(String::as_str).collect();
            for k in self.intent.active_on(&on) {
                self.lose(&k);
            }
            tracing::warn!(node = %lost.node, machines = lost.machines.len(), "node missed its heartbeats: its machines are lost");
        }
        if now.saturating_duration_since(self.started) > self.machine_timeout {
            let inventory = &self.inventory;
            for k in self.intent.orphans(|m| inventory.machine(m).is_some()) {
                self.lose(&k);
            }
        }
    }

    /// A placement's machine is gone: free it and report the task lost.
    /// Whether it runs again, when and where, is the global scheduler's
    /// call (its restart rules and backoff).
    fn lose(&mut self, k: &TaskKey) {
        let Some(freed) = self.intent.lose(k) else {
            return;
        };
        if let Some((id, request, gpus)) = freed {
            self.inventory.release(id, &request, &gpus);
        }
        self.reports.lost(&k.0, k.1);
    }

    // ---- the global scheduler ----

    pub fn receive(&mut self, batch: pb::AssignmentBatch) {
        self.queue.seen(batch.seq);
        self.forget_jobs(&batch.deleted_jobs);
        if batch.resync {
            self.reconcile(&batch.held);
        }
        for job in &batch.cancelled_jobs {
            self.cancel(job);
        }
        for a in &batch.assignments {
            self.specs.learn(&a.job, JobSpec::from(a));
            for &index in &a.indices {
                let k = (a.job.clone(), index);
                match self.intent.get(&k) {
                    // Already here: say where it is.
                    Some(p) if p.record.state.is_active() => {
                        self.reports.push(intent::report(&k, &p.record));
                    }
                    // Ended here and handed over again by a resync: the
                    // scheduler may not have heard how it ended yet.
                    Some(p) if batch.resync => {
                        self.reports.push(intent::report(&k, &p.record));
                    }
                    // New, or a new attempt after a failure or a loss.
                    _ => {
                        self.queue.add(k);
                    }
                }
            }
        }
    }

    /// Jobs deleted: their tasks stop, and everything stored of them here
    /// and on the nodes goes.
    fn forget_jobs(&mut self, jobs: &[String]) {
        // Per node, the deleted jobs it hosted tasks of.
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for job in jobs {
            self.queue.cancel(job);
            let placed = self.intent.of_job(job);
            // Never here: nothing stored, nothing on a node.
            if placed.is_empty() && self.specs.get(job).is_none() {
                continue;
            }
            let mut nodes = BTreeSet::new();
            for k in placed {
                let Some(mut p) = self.intent.forget(&k) else {
                    continue;
                };
                if let Some((id, request, gpus)) = p.uncount() {
                    self.inventory.release(id, &request, &gpus);
                }
                if let Some(m) = self.inventory.machine(&p.record.machine) {
                    nodes.insert(m.node.clone());
                }
            }
            self.specs.forget(job);
            self.deletions
                .push(sched_store::Write::delete_prefix(self.keys.job(job)));
            for node in nodes {
                by_node.entry(node).or_default().push(job.clone());
            }
        }
        // Nodes that are away hear of it when they register again (tasks
        // of jobs this agent does not know are forgotten then).
        for (node, jobs) in by_node {
            self.links.forget_on(&node, jobs);
        }
    }

    /// The first batch of a stream says what the scheduler counts as this
    /// cluster's: jobs it does not list were deleted while the agent was
    /// away; tasks on machines it does not list were taken back. Both stop
    /// here and are forgotten, so that nothing runs twice.
    fn reconcile(&mut self, held: &[pb::JobTasks]) {
        let listed: BTreeMap<&str, BTreeSet<u32>> = held
            .iter()
            .map(|h| (h.job.as_str(), h.indices.iter().copied().collect()))
            .collect();
        let known: BTreeSet<String> = self
            .intent
            .jobs()
            .into_iter()
            .chain(self.specs.jobs().cloned())
            .collect();
        let deleted: Vec<String> = known
            .into_iter()
            .filter(|j| !listed.contains_key(j.as_str()))
            .collect();
        if !deleted.is_empty() {
            tracing::info!(
                jobs = deleted.len(),
                "jobs deleted while this agent was away: forgetting them"
            );
            self.forget_jobs(&deleted);
        }
        let mut taken = Vec::new();
        for (job, indices) in &listed {
            for k in self.intent.of_job(job) {
                let active = self
                    .intent
                    .get(&k)
                    .is_some_and(|p| p.record.state.is_active());
                if active && !indices.contains(&k.1) {
                    taken.push(k);
                }
            }
        }
        let queued: Vec<TaskKey> = self
            .queue
            .iter()
            .filter(|k| listed.get(k.0.as_str()).is_none_or(|i| !i.contains(&k.1)))
            .cloned()
            .collect();
        for k in queued {
            self.queue.remove(&k);
        }
        for k in taken {
            let Some(mut p) = self.intent.forget(&k) else {
                continue;
            };
            tracing::warn!(job = %k.0, index = k.1, machine = %p.record.machine, "task taken back by the global scheduler while this cluster was away: stopping it");
            if let Some((id, request, gpus)) = p.uncount() {
                self.inventory.release(id, &request, &gpus);
            }
            if let Some(node) = self
                .inventory
                .machine(&p.record.machine)
                .map(|m| m.node.clone())
            {
                let stop = pb::TaskStop {
                    job: k.0.clone(),
                    index: k.1,
                    machine: p.record.machine.clone(),
                };
                self.links.stop(&node, stop);
            }
            let key = self.keys.placement(&k);
            self.deletions
                .push(sched_store::Write::delete(key, sched_store::Expect::Any));
        }
    }

    fn cancel(&mut self, job: &str) {
        self.queue.cancel(job);
        for ((job, index), machine) in self.intent.active_of(job) {
            let Some(node) = self.inventory.machine(&machine).map(|m| m.node.clone()) else {
                continue;
            };
            let stop = pb::TaskStop {
                job,
                index,
                machine,
            };
            self.links.stop(&node, stop);
        }
    }

    // ---- placing ----

    /// Packs up to `limit` queued tasks onto the machines and hands back
    /// what fits nowhere. Returns the writes of this pass (specs, new
    /// placements, new states), split into commits by the store's batcher.
    /// Capacity is taken now, and given back by [`Self::failed`] if a
    /// commit fails. A write too large for any commit is handed back with
    /// the reason, never retried.
    pub fn commits(&mut self, limit: usize, now: Instant) -> Vec<Vec<Change>> {
        // Deletes first, in commits of their own: a job deleted and then
        // submitted again under its name must not meet its old keys.
        let deletes: Vec<Change> = std::mem::take(&mut self.deletions)
            .into_iter()
            .map(|write| Change::Delete { write })
            .collect();
        let mut out = batch::stream_chunks(deletes, Change::write).commits;
        out.extend(self.placement_commits(limit, now));
        out
    }

    fn placement_commits(&mut self, limit: usize, now: Instant) -> Vec<Vec<Change>> {
        let mut changes = self.plan(limit, now);
        // A placement's new record supersedes its old one's state.
        let placing: BTreeSet<TaskKey> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Place { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let states = self.intent.state_writes().into_iter();
        changes.extend(
            states
                .filter(|(key, _)| !placing.contains(key))
                .map(|(key, write)| Change::State { key, write }),
        );
        // Specs first, in commits of their own as far as they go: the
        // planner sends those alone and the placements after them several
        // at a time (a spec stays in the commit of its job's first
        // placement or an earlier one).
        changes.sort_by_key(|c| !matches!(c, Change::Spec { .. }));
        let split = batch::stream_chunks(changes, Change::write);
        if split.refused.is_empty() {
            return split.commits;
        }
        let mut refused_jobs: BTreeMap<String, String> = BTreeMap::new();
        let mut give_back: Vec<(TaskKey, Placement, String)> = Vec::new();
        for r in split.refused {
            let reason = format!("cannot store it: {}", r.reason);
            match r.item {
                Change::Spec { job, .. } => {
                    tracing::error!(%job, cause = %r.reason, "the job's spec is too large to store: its tasks are handed back");
                    refused_jobs.insert(job, reason);
                }
                Change::Place { key, placement, .. } => give_back.push((key, placement, reason)),
                // A state record is a few dozen bytes, a delete has none.
                Change::State { key, .. } => {
                    tracing::error!(job = %key.0, index = key.1, cause = %r.reason, "a task state cannot be stored");
                }
                Change::Delete { .. } => {}
            }
        }
        let commits = split
            .commits
            .into_iter()
            .map(|commit| {
                commit
                    .into_iter()
                    .filter_map(|c| match c {
                        Change::Place { key, placement, .. }
                            if refused_jobs.contains_key(&key.0) =>
                        {
                            let reason = refused_jobs[&key.0].clone();
                            give_back.push((key, placement, reason));
                            None
                        }
                        c => Some(c),
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|commit| !commit.is_empty())
            .collect();
        for (key, placement, reason) in give_back {
            self.unplace(&key, &placement);
            self.reports.hand_back(&key.0, vec![key.1], reason);
        }
        commits
    }

    fn plan(&mut self, limit: usize, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.queue.is_empty() {
            return changes;
        }
        let mut jobs = self.queue.first(limit);
        // A job whose spec this agent lost (an unreadable record): the
        // global scheduler sends it again with the next assignment.
        jobs.retain(|(job, indices)| {
            if self.specs.get(job).is_some() {
                return true;
            }
            for index in indices.iter() {
                self.queue.remove(&(job.clone(), *index));
            }
            let reason = "this cluster does not know the job's spec".to_string();
            self.reports.hand_back(job, indices.clone(), reason);
            false
        });
        let packed = packing::pack(&jobs, &self.specs, &mut self.inventory, &self.policy);
        let mut specs_written = BTreeSet::new();
        for (key, m, request, gpus) in packed.placed {
            if specs_written.insert(key.0.clone()) {
                if let Some(write) = self.specs.write(&key.0, self.keys.spec(&key.0)) {
                    let job = key.0.clone();
                    changes.push(Change::Spec { job, write });
                }
            }
            let (record, write) = self.intent.next(&key, self.inventory.name(m), gpus);
            self.queue.remove(&key);
            let placement = Placement {
                record,
                rev: 0,
                counted: Some((m, request)),
            };
            changes.push(Change::Place {
                key,
                placement,
                write,
            });
        }
        // Right after a start, machines are still registering: keep the
        // tasks rather than bounce them.
        let registering = self.inventory.is_empty()
            || now.saturating_duration_since(self.started) < self.machine_timeout;
        if !registering {
            // What fits nowhere may evict lower-priority tasks.
            let mut unplaced = packed.unplaced;
            changes.extend(self.preempt_for(&mut unplaced));
            for (job, indices, reason) in unplaced {
                for &index in &indices {
                    self.queue.remove(&(job.clone(), index));
                }
                self.reports.hand_back(&job, indices, reason);
            }
        }
        changes
    }

    /// A placement that will not be written: its capacity goes back, and
    /// the state of the placement it was to replace is due again.
    fn unplace(&mut self, key: &TaskKey, placement: &Placement) {
        if let Some((id, request)) = placement.counted {
            self.inventory.release(id, &request, &placement.record.gpus);
        }
        if self.intent.get(key).is_some_and(|p| p.rev != 0) {
            self.intent.unwritten(key.clone());
        }
    }

    /// A commit is in the store (at `rev`): record it, tell the nodes what
    /// to start, tell the global scheduler what is placed.
    pub fn applied(&mut self, commit: Vec<Change>, rev: Revision) {
        // One work batch per node, not one per task.
        let mut starts: BTreeMap<String, Vec<pb::TaskStart>> = BTreeMap::new();
        for change in commit {
            match change {
                Change::Spec { job, .. } => self.specs.stored(&job, rev),
                Change::State { key, write } => {
                    if write.op == sched_store::Op::Delete {
                        self.intent.collected(&key);
                    } else {
                        self.intent.written(&key, rev);
                        self.preempted_written(&key);
                    }
                }
                Change::Delete { .. } => {}
                Change::Place {
                    key, mut placement, ..
                } => {
                    placement.rev = rev;
                    let node = self.inventory.machine(&placement.record.machine);
                    let start = self.start_message(&key, &placement.record);
                    if let (Some(m), Some(start)) = (node, start) {
                        starts.entry(m.node.clone()).or_default().push(start);
                    }
                    self.reports.push(intent::report(&key, &placement.record));
                    self.intent.placed(key, placement);
                }
            }
        }
        for (node, s) in starts {
            self.links.start(&node, s);
        }
    }

    /// A commit failed with `err`: nothing of it is known to be in. Its
    /// placements give their capacity back and wait again, or, when `err`
    /// says a retry cannot help, are handed back with it. Returns the keys
    /// to read back, whose revisions decide the next attempt's guards.
    pub fn failed(&mut self, commit: Vec<Change>, err: &AgentError) -> Vec<String> {
        let retry = matches!(err.code(), Code::Unavailable | Code::Aborted);
        let mut keys = Vec::with_capacity(commit.len());
        let mut handed: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for change in commit {
            keys.push(change.write().key.clone());
            match change {
                Change::Spec { .. } => {}
                Change::Delete { write } => self.deletions.push(write),
                Change::State { key, write } if write.op == sched_store::Op::Delete => {
                    self.intent.uncollected(key)
                }
                Change::State { key, .. } => self.intent.unwritten(key),
                Change::Place { key, placement, .. } => {
                    self.unplace(&key, &placement);
                    if retry {
                        self.queue.add(key);
                    } else {
                        handed.entry(key.0).or_default().push(key.1);
                    }
                }
            }
        }
        for (job, indices) in handed {
            let reason = format!("cannot store its placement: {err}");
            self.reports.hand_back(&job, indices, reason);
        }
        keys
    }

    /// What the store holds at `key`, read back after a failed commit.
    pub fn refresh(&mut self, key: &str, kv: Option<KeyValue>) {
        match self.keys.parse(key) {
            Some(Stored::Spec(job)) => self.specs.refresh(&job, kv),
            Some(Stored::Placement(k)) => self.intent.refresh(&k, kv),
            None => {}
        }
    }

    fn start_message(&self, k: &TaskKey, record: &PlacementRecord) -> Option<pb::TaskStart> {
        let spec = self.specs.get(&k.0)?;
        Some(pb::TaskStart {
            job: k.0.clone(),
            index: k.1,
            machine: record.machine.clone(),
            command: spec.command.clone(),
            request: Some(to_pb(&spec.request())),
            attempt: record.attempt,
            cluster: self.cluster.clone(),
            gpus: record
                .gpus
                .iter()
                .map(|g| pb::GpuSlot {
                    device: g.device,
                    milli: g.milli,
                })
                .collect(),
        })
    }

    // ---- reports ----

    /// Queues a report of every stored placement, superseding the queued
    /// ones but the losses (see [`Reports::resync`]).
    pub fn resync_reports(&mut self) {
        self.reports.resync(self.intent.stored_reports());
    }

    pub fn take_reports(&mut self, max: usize) -> Outgoing {
        self.reports.take(max)
    }

    pub fn put_back_reports(&mut self, out: Outgoing) {
        self.reports.put_back(out);
    }

    /// A report call that carried `tasks` returned: the global scheduler
    /// has committed them, and the placements that succeeded are garbage
    /// (their keys are deleted by the next passes).
    pub fn reports_delivered(&mut self, tasks: &[pb::TaskReport]) {
        for r in tasks {
            self.intent.acknowledged(r);
        }
    }

    /// The session with the global scheduler failed: the succeeded states
    /// it has not acknowledged are written to the store after all, so that
    /// a restart of this agent while the scheduler is away does not
    /// depend on the nodes alone to know them.
    pub fn session_failed(&mut self) {
        self.intent.store_unacknowledged();
    }

    pub fn pending_reports(&self) -> usize {
        self.reports.pending()
    }

    // ---- views ----

    /// Classes for the global scheduler: capacity, labels, machines up.
    pub fn classes(&self) -> Vec<pb::MachineClassStatus> {
        self.inventory.classes()
    }

    /// Tasks waiting to be packed.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// What the heartbeat to the global scheduler carries.
    pub fn heartbeat_request(&self) -> pb::HeartbeatRequest {
        let queued = self
            .queue
            .iter()
            .filter_map(|k| self.specs.get(&k.0))
            .fold(Resources::ZERO, |a, s| a.saturating_add(&s.request()));
        // The queued tasks by job, for the room they will take.
        let mut by_job: BTreeMap<&str, u32> = BTreeMap::new();
        for k in self.queue.iter() {
            *by_job.entry(k.0.as_str()).or_insert(0) += 1;
        }
        let batch: Vec<TaskGroup<'_>> = by_job
            .into_iter()
            .enumerate()
            .filter_map(|(i, (job, count))| {
                let s = self.specs.get(job)?;
                Some(TaskGroup {
                    job: JobId(i as u32),
                    request: s.request(),
                    constraints: &s.constraints,
                    priority: s.priority,
                    count,
                })
            })
            .collect();
        pb::HeartbeatRequest {
            cluster: self.cluster.clone(),
            classes: self.inventory.classes(),
            allocated: Some(to_pb(&self.inventory.allocated())),
            queued: Some(to_pb(&queued)),
            queue_len: self.queue.len() as u64,
            seq_seen: self.queue.seq_seen(),
            by_priority: self.by_priority(),
            room: Some(self.inventory.room(&batch, &self.policy)),
        }
    }

    pub fn machine_statuses(&self) -> Vec<pb::MachineStatus> {
        self.inventory
            .statuses(&self.cluster, self.intent.tasks_by_machine())
    }

    /// The node address serving a task's output, and the task's machine.
    pub fn task_node(&self, job: &str, index: u32) -> Result<(String, String), AgentError> {
        let not_found = || AgentError::TaskNotFound {
            job: job.to_string(),
            index,
            why: format!("is not placed in cluster {}", self.cluster),
        };
        let p = self
            .intent
            .get(&(job.to_string(), index))
            .ok_or_else(not_found)?;
        let address = self
            .inventory
            .address_of(&p.record.machine)
            .ok_or_else(not_found)?;
        Ok((address.to_string(), p.record.machine.clone()))
    }

    pub fn check(&self) -> Result<(), AgentError> {
        self.inventory.check()
    }
}

mod preemption;
#[cfg(test)]
mod tests;
