//! The one task that writes task and cluster keys: it takes cluster reports,
//! cancels and registrations from a bounded queue, batches their writes into
//! store commits (split by `sched_store::batch`, every key guarded by its
//! revision), applies what committed to the in-memory [`State`](crate::state::State), and runs
//! scheduling passes that assign pending tasks to clusters the same way.
//!
//! One writer means the revisions it guards with are always the latest it
//! knows, and memory changes only after etcd has the change. (New jobs are
//! written by the [`submitter`](crate::submitter)s: creating a key guarded
//! by `Absent` cannot race with anything the engine writes.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sched_core::cluster::ClusterId;
use sched_proto::pb;
use sched_store::pipeline::{self, Pending};
use sched_store::{batch, Expect, Store, StoreError, Write};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::hub::{Command, Shared};
use crate::records::ClusterRecord;
use crate::state::{EventKind, TaskChange};

pub struct Engine {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Command>,
}

/// Commands taken from the queue per round.
const ROUND: usize = 4096;

impl Engine {
    pub fn new(shared: Arc<Shared>, store: Arc<dyn Store>, rx: mpsc::Receiver<Command>) -> Self {
        Engine { shared, store, rx }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.shared.limits.heartbeat_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pass = Instant::now();
        // After a restart, give the clusters known from the store one
        // heartbeat timeout to report in before assigning anything, so that
        // the first pass does not send everything to whichever cluster
        // reconnected first.
        let started = Instant::now();
        let warmup_until = started + self.shared.limits.heartbeat_timeout;
        let mut last_sweep = Instant::now();
        let shared = self.shared.clone();
        let warming_up = move || {
            Instant::now() < warmup_until
                && shared.read(|s| s.registry().entries().iter().any(|c| !c.summary.up))
        };
        // A pass cut short by its budget leaves work for the next; passes
        // then run back to back, with what arrived meanwhile (placement
        // reports, cancels) taken in between, so that a long backlog does
        // not hold up the reports of the tasks it places.
        let mut more = false;
        loop {
            let schedule = if more {
                if shutdown.is_cancelled() {
                    break;
                }
                let batch = self.round(Vec::new());
                if !batch.is_empty() {
                    self.handle(batch).await;
                }
                true
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    cmd = self.rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        let batch = self.round(vec![cmd]);
                        self.handle(batch).await
                    }
                    _ = self.shared.wake.notified() => true,
                    _ = tick.tick() => {
                        let down = self.shared.write(|s| s.registry_mut().expire(Instant::now()));
                        for c in down {
                            tracing::warn!(cluster = %c, "cluster missed its heartbeats: marked down");
                        }
                        let due = self.shared.write(|s| s.release_due());
                        if last_sweep.elapsed() >= Duration::from_secs(1) {
                            last_sweep = Instant::now();
                            self.sweep(started).await;
                        }
                        // Retry every pending job now and then (a cluster may
                        // have freed room without a visible change).
                        if last_pass.elapsed() >= Duration::from_secs(1) {
                            self.shared.write(|s| s.mark_rescan());
                            true
                        } else {
                            due
                        }
                    }
                }
            };
            more = false;
            if schedule && !warming_up() {
                last_pass = Instant::now();
                more = self.schedule().await;
            }
            self.collect_garbage().await;
        }
        tracing::info!("engine stopped");
    }

    /// `batch` and the commands queued behind it, up to [`ROUND`].
    fn round(&mut self, mut batch: Vec<Command>) -> Vec<Command> {
        while batch.len() < ROUND {
            match self.rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        batch
    }

    /// Handles one round of commands; true if a scheduling pass is due.
    async fn handle(&mut self, batch: Vec<Command>) -> bool {
        let mut schedule = false;
        for cmd in batch {
            match cmd {
                Command::Report {
                    cluster,
                    tasks,
                    handed_back,
                    reply,
                } => {
                    schedule |= !handed_back.is_empty();
                    let r = self.report(cluster, &tasks, &handed_back).await;
                    let _ = reply.send(r);
                }
                Command::Cancel { name, reply } => {
                    let _ = reply.send(self.cancel(&name).await);
                }
                Command::Register { record, reply } => {
                    let _ = reply.send(self.register(record).await);
                    schedule = true;
                }
                Command::Delete { name, force, reply } => {
                    let r = self.delete(&[name], force, "deleted by a user").await;
                    let _ = reply.send(r);
                }
                Command::DeleteCluster { name, reply } => {
                    let _ = reply.send(self.delete_cluster(&name).await);
                    schedule = true;
                }
            }
        }
        schedule
    }

    async fn report(
        &mut self,
        cluster: ClusterId,
        tasks: &[pb::TaskReport],
        handed_back: &[pb::HandBack],
    ) -> Result<(), ServiceError> {
        let mut lost_on_the_way: BTreeMap<String, u32> = BTreeMap::new();
        // Submit to first placement, per task placed by this report.
        let mut placed_after_ms: Vec<i64> = Vec::new();
        let changes: Vec<TaskChange> = self.shared.read(|state| {
            let mut seen = std::collections::BTreeSet::new();
            let mut out = Vec::new();
            for h in handed_back {
                for c in state.hand_back_changes(cluster, h) {
                    if seen.insert((c.job.clone(), c.index)) {
                        out.push(c);
                    }
                }
            }
            // Several reports of one task in one call: the last one wins
            // (one write per key), but a loss on the way is still told.
            let mut last: BTreeMap<(String, u32), &pb::TaskReport> = BTreeMap::new();
            for t in tasks {
                last.insert((t.job.clone(), t.index), t);
            }
            for t in tasks {
                if t.state == pb::TaskState::Lost as i32
                    && last
                        .get(&(t.job.clone(), t.index))
                        .is_some_and(|l| l.state != t.state)
                {
                    *lost_on_the_way.entry(t.job.clone()).or_insert(0) += 1;
                }
            }
            for ((job, index), t) in last {
                if seen.contains(&(job, index)) {
                    continue;
                }
                if let Some(c) = state.report_change(cluster, t) {
                    if let Some(ms) = first_placement(state, &c) {
                        placed_after_ms.push(ms);
                    }
                    out.push(c);
                }
            }
            out
        });
        let result = self.commit_changes(changes).await;
        if result.is_ok() {
            let latency = &crate::metrics::metrics().scheduling_latency;
            for ms in placed_after_ms {
                latency.observe(ms.max(0) as f64 / 1000.0);
            }
            self.shared.write(|state| {
                for (job, n) in lost_on_the_way {
                    state.push_job_event(
                        &job,
                        EventKind::Lost,
                        format!("{n} task(s) lost with their machine and placed again"),
                    );
                }
            });
        }
        result
    }

    async fn cancel(&mut self, name: &str) -> Result<pb::JobState, ServiceError> {
        let Some((record, write)) = self.shared.read(|s| s.cancel_write(name))? else {
            // Cancelled already: cancel is idempotent.
            return Ok(pb::JobState::Cancelled);
        };
        let rev = self.store.commit(&[write]).await?;
        let clusters = self.shared.write(|s| s.apply_cancel(record, rev));
        for c in clusters {
            self.shared.push(
                c,
                pb::AssignmentBatch {
                    cancelled_jobs: vec![name.to_string()],
                    ..Default::default()
                },
            );
        }
        Ok(pb::JobState::Cancelled)
    }

    /// Deletes jobs (finished ones; any, cancelling them first, with
    /// `force`): their keys go in one commit per few jobs, then every
    /// cluster is told to stop and forget what it holds of them.
    async fn delete(
        &mut self,
        names: &[String],
        force: bool,
        why: &str,
    ) -> Result<(), ServiceError> {
        if force {
            for name in names {
                match self.cancel(name).await {
                    Ok(_) | Err(ServiceError::FailedPrecondition(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut deleted: Vec<String> = Vec::new();
        let mut result = Ok(());
        // As many jobs a commit as fit its operations (each job takes a
        // few: its key, its tasks, its events). A fixed number of jobs a
        // commit outgrew the limit once a job's writes grew, and then every
        // commit of a backlog of expired jobs failed, for good.
        let mut chunk: Vec<String> = Vec::new();
        let mut writes: Vec<Write> = Vec::new();
        for name in names {
            let w = match self.shared.read(|s| s.delete_writes(name, force)) {
                Ok(w) => w,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if !chunk.is_empty() && writes.len() + w.len() > sched_store::MAX_OPS_PER_COMMIT {
                if let Err(e) = self.commit_deletes(&chunk, &writes, why).await {
                    result = Err(e);
                    chunk.clear();
                    break;
                }
                deleted.append(&mut chunk);
                writes.clear();
            }
            writes.extend(w);
            chunk.push(name.clone());
        }
        if !chunk.is_empty() {
            match self.commit_deletes(&chunk, &writes, why).await {
                Ok(()) => deleted.append(&mut chunk),
                Err(e) => result = result.and(Err(e)),
            }
        }
        if !deleted.is_empty() {
            tracing::info!(jobs = deleted.len(), reason = why, "jobs deleted");
            self.shared.push_all(pb::AssignmentBatch {
                deleted_jobs: deleted,
                ..Default::default()
            });
        }
        result
    }

    /// Commits one batch of job deletions and forgets those jobs.
    async fn commit_deletes(
        &mut self,
        names: &[String],
        writes: &[Write],
        why: &str,
    ) -> Result<(), ServiceError> {
        self.store.commit(writes).await?;
        self.shared.write(|s| {
            for name in names {
                s.apply_delete(name, why);
            }
        });
        Ok(())
    }

    /// The periodic upkeep: jobs past their `ttl_after_finished` deleted,
    /// tasks taken back from clusters down for longer than the policy
    /// allows, machine shapes not seen for long forgotten.
    async fn sweep(&mut self, started: Instant) {
        /// Jobs deleted per sweep at most, so that a backlog does not stall
        /// the engine.
        const DELETES_PER_SWEEP: usize = 600;
        let expired = self
            .shared
            .read(|s| s.expired(crate::records::now_unix_ms(), DELETES_PER_SWEEP));
        if !expired.is_empty() {
            if let Err(e) = self
                .delete(&expired, false, "ttl_after_finished passed")
                .await
            {
                tracing::warn!(cause = %e, "deleting expired jobs failed; retrying later");
            }
        }
        let gone = self
            .shared
            .read(|s| s.gone_clusters(Instant::now(), started));
        for c in gone {
            let changes = self.shared.read(|s| {
                let timeout = s.policy().lifecycle.cluster_down_timeout;
                let changes = s.take_back_changes(c, &format!("down for longer than {timeout}"));
                if !changes.is_empty() {
                    tracing::warn!(cluster = %s.registry().name(c), %timeout, tasks = changes.len(), "cluster down for longer than lifecycle.cluster_down_timeout: taking its tasks back");
                }
                changes
            });
            match self.commit_changes(changes).await {
                Ok(()) => self.shared.write(|s| s.registry_mut().mark_swept(c)),
                Err(e) => {
                    tracing::warn!(cause = %e, "taking tasks back failed; retrying later")
                }
            }
        }
        let changed = self.shared.write(|s| {
            let ttl = s.policy().lifecycle.machine_class_ttl.ms();
            let names = s
                .registry_mut()
                .expire_classes(crate::records::now_unix_ms(), ttl);
            names
                .into_iter()
                .filter_map(|n| {
                    let id = s.registry().id(&n)?;
                    let record = s.registry().entries()[id.0 as usize].record.clone();
                    Some((s.keys().cluster(&n), record))
                })
                .collect::<Vec<_>>()
        });
        for (key, record) in changed {
            tracing::info!(cluster = %record.name, "machine shapes not reported for lifecycle.machine_class_ttl forgotten");
            let value = serde_json::to_vec(&record).expect("cluster records serialize");
            if let Err(e) = self
                .store
                .commit(&[Write::put(key, value, Expect::Any)])
                .await
            {
                tracing::warn!(cause = %e, "cannot store a cluster record");
            }
        }
    }

    /// Forgets a cluster that is gone for good: its unfinished tasks are
    /// taken back (to run elsewhere), its record deleted.
    async fn delete_cluster(&mut self, name: &str) -> Result<u64, ServiceError> {
        let (id, key) = self.shared.read(|s| {
            let id = s.registry().id(name).ok_or_else(|| ServiceError::NotFound {
                what: "cluster",
                name: name.to_string(),
            })?;
            if s.registry().entries()[id.0 as usize].summary.up {
                return Err(ServiceError::FailedPrecondition(format!(
                    "cluster {name:?} is up (its local agent heartbeats); stop its local agent first"
                )));
            }
            Ok((id, s.keys().cluster(name)))
        })?;
        let changes = self
            .shared
            .read(|s| s.take_back_changes(id, "the cluster was deleted"));
        let n = changes.len() as u64;
        self.commit_changes(changes).await?;
        self.store
            .commit(&[Write::delete(key, Expect::Any)])
            .await?;
        self.shared.write(|s| {
            s.registry_mut().remove(name);
            s.mark_rescan();
        });
        tracing::info!(cluster = %name, tasks_taken_back = n, "cluster deleted");
        Ok(n)
    }

    async fn register(&mut self, record: ClusterRecord) -> Result<(), ServiceError> {
        let (key, record) = self.shared.read(|state| {
            (
                state.keys().cluster(&record.name),
                state.registry().with_seen_classes(record),
            )
        });
        let value = serde_json::to_vec(&record).expect("cluster records serialize");
        self.store
            .commit(&[Write::put(key, value, Expect::Any)])
            .await?;
        let name = record.name.clone();
        self.shared.write(|state| {
            state.registry_mut().register(record, true);
            state.mark_rescan();
        });
        tracing::info!(cluster = %name, "cluster registered");
        Ok(())
    }

    /// One scheduling pass: plan, commit, apply, then hand each cluster what
    /// it got in the pass as one batch, so that an agent packs a pass
    /// together (as the simulator does). True if the pass was cut short by
    /// its budget and jobs still wait: the next pass is due at once.
    async fn schedule(&mut self) -> bool {
        let started = Instant::now();
        let (changes, more) = self.shared.write(|state| {
            let plan = state.plan(self.shared.limits.pass_size);
            let mut changes: Vec<TaskChange> = Vec::new();
            for a in &plan {
                changes.extend(state.assignment_changes(a));
            }
            (changes, state.has_work())
        });
        if changes.is_empty() {
            return false;
        }
        let planned = changes.len() as u64;
        let mut handed: BTreeMap<ClusterId, pb::AssignmentBatch> = BTreeMap::new();
        let result = self.commit(changes, &mut handed).await;
        for (cluster, batch) in handed {
            self.shared.push(cluster, batch);
        }
        let m = crate::metrics::metrics();
        m.pass_duration.observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            m.tasks_assigned.inc_by(planned);
        }
        if let Err(e) = result {
            tracing::warn!(cause = %e, "scheduling pass not persisted; retrying later");
            return false;
        }
        more
    }

    /// Commits task changes and hands over what they assign at once.
    async fn commit_changes(&mut self, changes: Vec<TaskChange>) -> Result<(), ServiceError> {
        let mut handed = BTreeMap::new();
        let result = self.commit(changes, &mut handed).await;
        for (cluster, batch) in handed {
            self.shared.push(cluster, batch);
        }
        result
    }

    /// Commits task changes in as few commits as the store's limits allow,
    /// applying each once it is in and gathering, per cluster, the tasks
    /// they assign. A conflict means another writer moved a task: its job's
    /// tasks are read back from the store and the rest is dropped; changes
    /// not committed leave their tasks pending.
    async fn commit(
        &mut self,
        changes: Vec<TaskChange>,
        handed: &mut BTreeMap<ClusterId, pb::AssignmentBatch>,
    ) -> Result<(), ServiceError> {
        // Progress on machines is kept in memory only (see `state`): it is
        // applied at once, whatever becomes of the writes beside it.
        let (memory, changes): (Vec<TaskChange>, Vec<TaskChange>) = changes
            .into_iter()
            .partition(|c| c.write.is_none() && c.assignment.is_none());
        if !memory.is_empty() {
            let batches = self.shared.write(|s| s.apply(memory, 0));
            merge_handed(handed, batches);
        }
        // One write each: a task's key for its own change, one assignment
        // record for the tasks of a job a pass handed to one cluster.
        let mut groups: Vec<Vec<TaskChange>> = Vec::new();
        let mut written: Vec<(Write, Vec<TaskChange>)> = Vec::new();
        for c in changes {
            if let Some(w) = c.write.clone() {
                written.push((w, vec![c]));
            } else if let Some(g) = groups
                .last_mut()
                .filter(|g| (&g[0].job, g[0].assignment) == (&c.job, c.assignment))
            {
                g.push(c);
            } else {
                groups.push(vec![c]);
            }
        }
        let records: Vec<Option<Write>> = self
            .shared
            .read(|s| groups.iter().map(|g| s.assignment_write(g)).collect());
        let mut stranded: Vec<TaskChange> = Vec::new();
        for (record, group) in records.into_iter().zip(groups) {
            match record {
                Some(w) => written.push((w, group)),
                // Every change of a pass names its cluster and record.
                None => stranded.extend(group),
            }
        }
        if !stranded.is_empty() {
            tracing::error!(
                tasks = stranded.len(),
                "assignments without a cluster; requeued"
            );
            self.shared.write(|s| s.requeue(&stranded));
        }
        let split = batch::stream_chunks(written, |(w, _)| w);
        if !split.refused.is_empty() {
            // Task records are small and fixed in shape; one that does not
            // fit a commit is a bug, not a condition to retry.
            let keys: Vec<String> = split.refused.iter().map(|r| r.reason.to_string()).collect();
            tracing::error!(refused = ?keys, "task writes too large for a commit; dropped");
            let dropped: Vec<TaskChange> =
                split.refused.into_iter().flat_map(|r| r.item.1).collect();
            self.shared.write(|s| s.requeue(&dropped));
        }
        // Sent together; two commits that write one key go in order
        // (`sched_store::pipeline`).
        let commits = split.commits.into_iter().map(|chunk| {
            let (writes, chunk): (Vec<Write>, Vec<Vec<TaskChange>>) = chunk.into_iter().unzip();
            Pending::new(writes, chunk.into_iter().flatten().collect::<Vec<_>>())
        });
        let shared = &self.shared;
        let mut first_failure: Option<StoreError> = None;
        let not_started =
            pipeline::commit_all(&*self.store, commits, pipeline::DEPTH, |chunk, r| match r {
                Ok(rev) => {
                    let batches = shared.write(|s| s.apply(chunk, rev));
                    merge_handed(handed, batches);
                }
                Err(e) => {
                    shared.write(|s| s.requeue(&chunk));
                    first_failure.get_or_insert(e);
                }
            })
            .await;
        let Some(failed) = first_failure else {
            return Ok(());
        };
        let rest: Vec<TaskChange> = not_started.into_iter().flatten().collect();
        self.shared.write(|s| s.requeue(&rest));
        if let StoreError::Conflict { key, .. } = &failed {
            tracing::warn!(%key, "a task changed under us; reloading its job");
            self.reload_job_of(key).await?;
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected: Expect::Any,
                actual: None,
            }
            .into());
        }
        Err(failed.into())
    }

    /// Deletes the assignment records that no task stands on any more.
    /// One that is not deleted (the commit failed, the leader changed) is
    /// found again when the state is next read back.
    async fn collect_garbage(&mut self) {
        let keys = self.shared.write(|s| s.take_garbage());
        for chunk in keys.chunks(sched_store::MAX_OPS_PER_COMMIT) {
            let deletes: Vec<Write> = chunk
                .iter()
                .map(|k| Write::delete(k.clone(), Expect::Any))
                .collect();
            if let Err(e) = self.store.commit(&deletes).await {
                tracing::warn!(cause = %e, "deleting spent assignment records failed; a new leader finds them again");
                return;
            }
        }
    }

    async fn reload_job_of(&mut self, key: &str) -> Result<(), ServiceError> {
        let Some((prefix, job)) = self.shared.read(|state| {
            let (job, _) = state.keys().parse_under_tasks(key)?;
            Some((state.keys().job_tasks(job), job.to_string()))
        }) else {
            return Ok(());
        };
        let snap = self.store.list(&prefix).await?;
        if let Err(e) = self.shared.write(|s| s.reload_tasks(&job, &snap.items)) {
            tracing::error!(cause = %e, "cannot reload tasks");
        }
        Ok(())
    }
}

/// Adds what applied changes assign to what is to be handed over.
fn merge_handed(
    handed: &mut BTreeMap<ClusterId, pb::AssignmentBatch>,
    batches: BTreeMap<ClusterId, pb::AssignmentBatch>,
) {
    for (cluster, b) in batches {
        let into = handed.entry(cluster).or_default();
        into.assignments.extend(b.assignments);
        into.seq = into.seq.max(b.seq);
    }
}

/// For a change that places a task on a machine for the first time: how
/// long after its job's submission (Unix ms).
fn first_placement(state: &crate::state::State, c: &TaskChange) -> Option<i64> {
    use crate::records::TaskState;
    if !matches!(c.entry.state, TaskState::Placed | TaskState::Running) || c.entry.attempts != 1 {
        return None;
    }
    let j = state.job(&c.job)?;
    let before = j.tasks.get(c.index as usize)?;
    (before.state == TaskState::Assigned)
        .then(|| crate::records::now_unix_ms() - j.record.submitted_unix_ms)
}
