//! The one task that writes task and cluster keys: it takes cluster reports,
//! cancels and registrations from a bounded queue, batches their writes into
//! store commits (at most 128 operations each, every key guarded by its
//! revision), applies what committed to the in-memory [`State`], and runs
//! scheduling passes that assign pending tasks to clusters the same way.
//!
//! One writer means the revisions it guards with are always the latest it
//! knows, and memory changes only after etcd has the change. (New jobs are
//! written by the [`submitter`](crate::submitter)s: creating a key guarded
//! by `Absent` cannot race with anything the engine writes.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sched_core::cluster::ClusterId;
use sched_proto::pb;
use sched_store::{Expect, Store, StoreError, Write, MAX_COMMIT_BYTES, MAX_OPS_PER_COMMIT};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::records::ClusterRecord;
use crate::state::{State, TaskChange};

/// Commands for the engine.
pub enum Command {
    Report {
        cluster: ClusterId,
        tasks: Vec<pb::TaskReport>,
        handed_back: Vec<pb::HandBack>,
        reply: oneshot::Sender<Result<(), ServiceError>>,
    },
    Cancel {
        name: String,
        reply: oneshot::Sender<Result<pb::JobState, ServiceError>>,
    },
    Register {
        record: ClusterRecord,
        reply: oneshot::Sender<Result<(), ServiceError>>,
    },
}

/// Where the engine answers a call.
pub type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

pub type AssignmentSender = mpsc::Sender<Result<pb::AssignmentBatch, tonic::Status>>;

/// What the gRPC handlers and the engine share.
pub struct Shared {
    state: Mutex<State>,
    /// Open assignment streams, one per cluster.
    streams: Mutex<BTreeMap<ClusterId, AssignmentSender>>,
    pub commands: mpsc::Sender<Command>,
    /// Accepted submissions waiting for a [`Submitter`](crate::submitter::Submitter).
    pub submissions: mpsc::Sender<crate::submitter::Submission>,
    /// Wakes the engine for a scheduling pass (a heartbeat changed what
    /// clusters can take).
    pub wake: Notify,
    pub limits: Limits,
    /// Tasks of submit calls in the writers' queue, not yet in the state.
    pub reserved: std::sync::atomic::AtomicU64,
    /// Fires when the server shuts down: open streams end.
    pub shutdown: CancellationToken,
}

/// Bounds that keep memory in check under overload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Commands waiting for the engine.
    pub queue: usize,
    /// Pending tasks (accepted, not yet on a cluster) over all jobs.
    pub max_pending_tasks: u64,
    /// Jobs in one submit call.
    pub max_jobs_per_submit: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Tasks one scheduling pass assigns at most.
    pub pass_size: u64,
}

impl Shared {
    #[allow(clippy::type_complexity)]
    pub fn new(
        state: State,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> (
        Arc<Shared>,
        mpsc::Receiver<Command>,
        mpsc::Receiver<crate::submitter::Submission>,
    ) {
        let (tx, rx) = mpsc::channel(limits.queue);
        let (stx, srx) = mpsc::channel(limits.queue);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            streams: Mutex::new(BTreeMap::new()),
            commands: tx,
            submissions: stx,
            wake: Notify::new(),
            limits,
            reserved: std::sync::atomic::AtomicU64::new(0),
            shutdown,
        });
        (shared, rx, srx)
    }

    /// The state, for a short critical section (never across an await).
    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held would be a bug in State's own
        // bookkeeping; its data is still the best we have, so carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn streams(&self) -> MutexGuard<'_, BTreeMap<ClusterId, AssignmentSender>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a command, or refuses at once when the queue is full.
    pub fn send(&self, cmd: Command) -> Result<(), ServiceError> {
        self.commands.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ServiceError::Busy("the scheduler's queue is full".to_string())
            }
            mpsc::error::TrySendError::Closed(_) => ServiceError::ShuttingDown,
        })
    }

    /// Opens a cluster's assignment stream: first everything assigned to it
    /// and not placed, then what is assigned later. Replaces an older stream
    /// of the same cluster.
    pub fn open_stream(&self, cluster: ClusterId, tx: AssignmentSender) {
        // Under the state lock, so no assignment is applied between the
        // resync and the registration of the stream.
        let state = self.state();
        let batch = state.assigned_to(cluster);
        if tx.try_send(Ok(batch)).is_ok() {
            self.streams().insert(cluster, tx);
        }
    }

    fn push(&self, cluster: ClusterId, batch: pb::AssignmentBatch) {
        let mut streams = self.streams();
        if let Some(tx) = streams.get(&cluster) {
            if tx.try_send(Ok(batch)).is_err() {
                // Full (the agent is not reading) or closed: drop the stream;
                // the agent reconnects and gets a full resync.
                tracing::warn!(
                    cluster = cluster.0,
                    "assignment stream closed or full; dropped"
                );
                streams.remove(&cluster);
            }
        }
    }
}

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
        let warmup_until = Instant::now() + self.shared.limits.heartbeat_timeout;
        let shared = self.shared.clone();
        let warming_up = move || {
            let state = shared.state();
            let clusters = state.registry.entries();
            Instant::now() < warmup_until && clusters.iter().any(|c| !c.summary.up)
        };
        loop {
            let schedule = tokio::select! {
                _ = shutdown.cancelled() => break,
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let mut batch = vec![cmd];
                    while batch.len() < ROUND {
                        match self.rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    self.handle(batch).await
                }
                _ = self.shared.wake.notified() => true,
                _ = tick.tick() => {
                    let down = self.shared.state().registry.expire(Instant::now());
                    for c in down {
                        tracing::warn!(cluster = %c, "cluster missed its heartbeats: marked down");
                    }
                    // Retry every pending job now and then (a cluster may
                    // have freed room without a visible change).
                    if last_pass.elapsed() >= Duration::from_secs(1) {
                        self.shared.state().mark_rescan();
                        true
                    } else {
                        false
                    }
                }
            };
            if schedule && !warming_up() {
                last_pass = Instant::now();
                self.schedule().await;
            }
        }
        tracing::info!("engine stopped");
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
        let changes: Vec<TaskChange> = {
            let state = self.shared.state();
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
                    out.push(c);
                }
            }
            out
        };
        let result = self.commit_changes(changes).await;
        if result.is_ok() {
            let mut state = self.shared.state();
            for (job, n) in lost_on_the_way {
                state.push_job_event(
                    &job,
                    "lost",
                    format!("{n} task(s) lost with their machine and placed again"),
                );
            }
        }
        result
    }

    async fn cancel(&mut self, name: &str) -> Result<pb::JobState, ServiceError> {
        let Some((record, write)) = self.shared.state().cancel_write(name) else {
            return Err(ServiceError::NotFound {
                what: "job",
                name: name.to_string(),
            });
        };
        if let Some(j) = self.shared.state().job(name) {
            if j.record.cancelled {
                return Ok(pb::JobState::Cancelled);
            }
        }
        let rev = self.store.commit(&[write]).await?;
        let clusters = self.shared.state().apply_cancel(record, rev);
        for c in clusters {
            self.shared.push(
                c,
                pb::AssignmentBatch {
                    assignments: Vec::new(),
                    cancelled_jobs: vec![name.to_string()],
                    seq: 0,
                },
            );
        }
        Ok(pb::JobState::Cancelled)
    }

    async fn register(&mut self, record: ClusterRecord) -> Result<(), ServiceError> {
        let (key, record) = {
            let state = self.shared.state();
            (
                state.keys.cluster(&record.name),
                state.registry.with_seen_classes(record),
            )
        };
        let value = serde_json::to_vec(&record).expect("cluster records serialize");
        self.store
            .commit(&[Write::put(key, value, Expect::Any)])
            .await?;
        let name = record.name.clone();
        {
            let mut state = self.shared.state();
            state.registry.register(record, true);
            state.mark_rescan();
        }
        tracing::info!(cluster = %name, "cluster registered");
        Ok(())
    }

    /// One scheduling pass: plan, commit, apply, hand over.
    async fn schedule(&mut self) {
        let changes: Vec<TaskChange> = {
            let mut state = self.shared.state();
            let size = self.shared.limits.pass_size;
            let plan = state.plan(size);
            plan.iter()
                .flat_map(|a| state.assignment_changes(a))
                .collect()
        };
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.commit_changes(changes).await {
            tracing::warn!(cause = %e, "scheduling pass not persisted; retrying later");
        }
    }

    /// Commits task changes in chunks, applying each chunk once it is in.
    /// A conflict means another writer moved a task: its job's tasks are
    /// read back from the store and the rest of the pass is dropped.
    async fn commit_changes(&mut self, changes: Vec<TaskChange>) -> Result<(), ServiceError> {
        let mut rest = changes;
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len()
                && n < MAX_OPS_PER_COMMIT
                && bytes + rest[n].write.size() <= MAX_COMMIT_BYTES
            {
                bytes += rest[n].write.size();
                n += 1;
            }
            let later = rest.split_off(n);
            let chunk = rest;
            rest = later;
            let writes: Vec<Write> = chunk.iter().map(|c| c.write.clone()).collect();
            match self.store.commit(&writes).await {
                Ok(rev) => {
                    let handed = self.shared.state().apply(chunk, rev);
                    // Sent after the state lock is released; a stream opened
                    // in between already saw these tasks in its resync and
                    // will see them once more: agents ignore duplicates.
                    for (cluster, batch) in handed {
                        self.shared.push(cluster, batch);
                    }
                }
                Err(StoreError::Conflict { key, .. }) => {
                    tracing::warn!(%key, "a task changed under us; reloading its job");
                    self.reload_job_of(&key).await?;
                    return Err(StoreError::Conflict {
                        key,
                        expected: Expect::Any,
                        actual: None,
                    }
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn reload_job_of(&mut self, key: &str) -> Result<(), ServiceError> {
        let (prefix, job) = {
            let state = self.shared.state();
            match state.keys.parse_task(key) {
                Some((job, _)) => (state.keys.job_tasks(job), job.to_string()),
                None => return Ok(()),
            }
        };
        let snap = self.store.list(&prefix).await?;
        let mut state = self.shared.state();
        if let Err(e) = state.reload_tasks(&job, &snap.items) {
            tracing::error!(cause = %e, "cannot reload tasks");
        }
        Ok(())
    }
}
