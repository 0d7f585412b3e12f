//! What the gRPC handlers, the [`engine`](crate::engine) and the
//! submit writers share: the commands and submissions
//! queued for the writers, the limits that bound them, the open assignment
//! streams, and the state, reachable only through short closures (so no
//! lock is ever held across an await).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sched_core::cluster::ClusterId;
use sched_proto::pb;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::records::{ClusterRecord, JobRecord};
use crate::state::State;

/// One submit call's new jobs, checked and waiting to be written.
pub struct Submission {
    pub records: Vec<JobRecord>,
    pub reply: Reply<()>,
}

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
    Delete {
        name: String,
        force: bool,
        reply: oneshot::Sender<Result<(), ServiceError>>,
    },
    DeleteCluster {
        name: String,
        reply: oneshot::Sender<Result<u64, ServiceError>>,
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
    /// Accepted submissions waiting for a submit writer.
    pub submissions: mpsc::Sender<Submission>,
    /// Wakes the engine for a scheduling pass (a heartbeat changed what
    /// clusters can take).
    pub wake: Notify,
    pub limits: Limits,
    /// Tasks of submit calls in the writers' queue, not yet in the state.
    pub reserved: std::sync::atomic::AtomicU64,
    /// Fires when the server shuts down: open streams end.
    pub shutdown: CancellationToken,
    /// This term's store, fenced by the leader key: writes made outside
    /// the engine (quotas, the policy) fail instead of landing once
    /// another replica leads.
    pub store: Arc<dyn sched_store::Store>,
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
        store: Arc<dyn sched_store::Store>,
    ) -> (
        Arc<Shared>,
        mpsc::Receiver<Command>,
        mpsc::Receiver<Submission>,
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
            store,
        });
        (shared, rx, srx)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held would be a bug in State's own
        // bookkeeping; its data is still the best we have, so carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the state (a short critical section: `f` cannot await).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state())
    }

    /// Changes the state; for the writers (engine, submitters) and for
    /// heartbeats, which change nothing in the store.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state())
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

    /// Sends `batch` to every open assignment stream.
    pub(crate) fn push_all(&self, batch: pb::AssignmentBatch) {
        let clusters: Vec<ClusterId> = self.streams().keys().copied().collect();
        for c in clusters {
            self.push(c, batch.clone());
        }
    }

    pub(crate) fn push(&self, cluster: ClusterId, batch: pb::AssignmentBatch) {
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
