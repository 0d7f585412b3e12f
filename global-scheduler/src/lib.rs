//! The global scheduler: accepts jobs, keeps them in etcd, ranks clusters
//! for their tasks and hands the tasks to the clusters' local agents.
//!
//! # Layout
//! - [`keys`] and [`records`]: what lives in the store, and where.
//! - [`registry`]: clusters, from registrations and heartbeats.
//! - [`state`]: jobs and tasks in memory, and the transitions over them
//!   (the decision itself is `sched_core::assign`, which the simulator
//!   runs too).
//! - [`hub`]: what the handlers and the writers share: commands, replies,
//!   limits, submissions, assignment streams, and the state behind methods.
//! - [`submitter`]: writers of new jobs, group-committing submit calls.
//! - [`engine`]: the single writer of tasks: batches cluster reports,
//!   cancels and scheduling passes into guarded store commits.
//! - [`convert`]: records to API messages.
//! - [`service`]: the gRPC handlers (`sched.v1.Scheduler`, `sched.v1.Clusters`,
//!   and `grpc.health.v1.Health`).
//!
//! [`run`] takes the listener, the store and a shutdown token, so tests can
//! start it on port 0 against any [`Store`].

pub mod convert;
pub mod engine;
pub mod error;
pub mod hub;
pub mod keys;
pub mod leader;
pub mod records;
pub mod registry;
pub mod service;
pub mod state;
pub mod submitter;

use std::sync::Arc;
use std::time::Duration;

use sched_core::policy::Policy;
use sched_core::topology::Topology;
use sched_proto::pb::clusters_server::ClustersServer;
use sched_proto::pb::scheduler_server::SchedulerServer;
use sched_store::Store;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::error::RunError;
use crate::hub::{Limits, Shared};
use crate::keys::Keys;
use crate::registry::Registry;
use crate::state::admission::LoadError;
use crate::state::State;

pub use sched_proto::backoff::jitter;

/// Milliseconds since the Unix epoch, for records and events.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long open connections may take to close after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs `serve` until it ends, but no longer than [`SHUTDOWN_GRACE`] after
/// `shutdown` fires: a client that keeps its connection open (and does not
/// answer the server's GOAWAY) must not hold the process up.
pub async fn with_grace<F, E>(serve: F, shutdown: &CancellationToken) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("connections still open {} s after shutdown; closing them", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    }
}

/// Everything `run` needs besides the listener and the store.
#[derive(Debug, Clone)]
pub struct Config {
    pub prefix: String,
    pub policy: Policy,
    pub topology: Option<Topology>,
    pub heartbeat_interval: Duration,
    /// A cluster silent for this long is marked down.
    pub heartbeat_timeout: Duration,
    pub queue: usize,
    pub max_pending_tasks: u64,
    pub max_jobs_per_submit: usize,
    /// Where this replica serves, as other replicas and clients reach it
    /// (for standbys to name the leader).
    pub advertise: Option<String>,
}

impl Config {
    pub fn new(policy: Policy) -> Self {
        Config {
            prefix: "/sched".to_string(),
            policy,
            topology: None,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            // Each command is one call; 4,096 calls of 100-task jobs keep
            // 400k tasks in flight, seconds of etcd writes, before refusing.
            queue: 4096,
            max_pending_tasks: 2_000_000,
            max_jobs_per_submit: 10_000,
            advertise: None,
        }
    }
}

/// Serves until `shutdown` fires: as a standby (answering UNAVAILABLE with
/// the leader's address) until this replica wins the election, then as the
/// leader, its state loaded from the store. A leader that loses its lease
/// stops with an error, so that a supervisor restarts it as a standby.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let address = config
        .advertise
        .clone()
        .unwrap_or(format!("http://{}", listener.local_addr()?));
    let role = Arc::new(service::Role::new(store.clone(), config.clone()));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<SchedulerServer<service::SchedulerService>>()
        .await;
    health_reporter
        .set_not_serving::<ClustersServer<service::ClustersService>>()
        .await;
    tracing::info!(addr = %listener.local_addr()?, %address, "serving");
    let serve = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(SchedulerServer::new(service::SchedulerService::new(
            role.clone(),
        )))
        .add_service(ClustersServer::new(service::ClustersService::new(
            role.clone(),
        )))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );

    let tracker = TaskTracker::new();
    tracker.spawn(leadership(
        role,
        store,
        config,
        address,
        shutdown.clone(),
        health_reporter,
    ));
    let result = with_grace(serve, &shutdown).await;
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within 10 s");
    }
    result?;
    Ok(())
}

/// Terms of leadership, one after another: campaign, lead until the lease
/// is lost (etcd unreachable past the TTL, or fenced off), stand by again.
async fn leadership(
    role: Arc<service::Role>,
    store: Arc<dyn Store>,
    config: Config,
    address: String,
    shutdown: CancellationToken,
    health: tonic_health::server::HealthReporter,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let lost = CancellationToken::new();
        let term = TaskTracker::new();
        match lead(&role, &store, &config, &address, &shutdown, &lost, &term).await {
            Ok(true) => {
                backoff = Duration::from_millis(200);
                health
                    .set_serving::<SchedulerServer<service::SchedulerService>>()
                    .await;
                health
                    .set_serving::<ClustersServer<service::ClustersService>>()
                    .await;
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = lost.cancelled() => {
                        tracing::error!("lost leadership: standing by");
                    }
                }
                role.step_down();
                health
                    .set_not_serving::<SchedulerServer<service::SchedulerService>>()
                    .await;
                health
                    .set_not_serving::<ClustersServer<service::ClustersService>>()
                    .await;
                // The term's tasks stop with the lease (or the shutdown).
                lost.cancel();
                term.close();
                if tokio::time::timeout(Duration::from_secs(10), term.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!("the last term's tasks did not stop within 10 s");
                }
            }
            Ok(false) => return,
            Err(e) => {
                tracing::error!(cause = %e, "cannot take over as leader; standing by");
                lost.cancel();
                term.close();
                let _ = tokio::time::timeout(Duration::from_secs(10), term.wait()).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Campaigns, then loads the state and runs the leader's tasks in `term`
/// until `lost`; false if `shutdown` came first.
async fn lead(
    role: &Arc<service::Role>,
    store: &Arc<dyn Store>,
    config: &Config,
    address: &str,
    shutdown: &CancellationToken,
    lost: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<bool, RunError> {
    let keys = Keys::new(&config.prefix);
    let ttl = Duration::from_secs(u64::from(config.policy.ha.leader_lease_seconds));
    let Some(leadership) =
        leader::campaign(store, &keys.leader(), address, ttl, role, shutdown).await
    else {
        return Ok(false);
    };
    let elected = std::time::Instant::now();
    tracker.spawn(leader::keep_leading(
        store.clone(),
        leadership,
        ttl,
        lost.clone(),
        shutdown.clone(),
    ));
    // Every write from here on is fenced by the leader key.
    let store: Arc<dyn Store> = Arc::new(sched_store::Fenced::new(
        store.clone(),
        keys.leader(),
        leadership.revision,
        lost.clone(),
    ));
    let state = load(&keys, &store, config).await?;
    let limits = Limits {
        queue: config.queue,
        max_pending_tasks: config.max_pending_tasks,
        max_jobs_per_submit: config.max_jobs_per_submit,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        pass_size: u64::from(config.policy.local.batch_size.max(1)),
    };
    // The leader's tasks stop on shutdown or on losing the lease.
    let leader_token = shutdown.child_token();
    {
        let (lost, t) = (lost.clone(), leader_token.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => t.cancel(),
                _ = t.cancelled() => {}
            }
        });
    }
    let (shared, rx, submissions) = Shared::new(state, limits, leader_token.clone());
    for s in submitter::Submitter::pool(shared.clone(), store.clone(), submissions) {
        tracker.spawn(s.run(leader_token.clone()));
    }
    tracker.spawn(Engine::new(shared.clone(), store, rx).run(leader_token));
    role.lead(shared);
    tracing::info!(
        revision = leadership.revision,
        ready_ms = elected.elapsed().as_millis() as u64,
        "leading"
    );
    Ok(true)
}

/// Reads clusters, jobs and tasks back from the store.
async fn load(keys: &Keys, store: &Arc<dyn Store>, config: &Config) -> Result<State, RunError> {
    let started = std::time::Instant::now();
    let state = load_state(keys, store, config, None).await?;
    tracing::info!(
        clusters = state.registry().entries().len(),
        jobs = state.jobs().count(),
        pending_tasks = state.pending_tasks(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state loaded from the store"
    );
    Ok(state)
}

/// The state as stored: clusters, and every job with its tasks, or only
/// job `only` (for a standby answering a read about one job). Clusters are
/// down until their agents heartbeat.
pub(crate) async fn load_state(
    keys: &Keys,
    store: &Arc<dyn Store>,
    config: &Config,
    only: Option<&str>,
) -> Result<State, RunError> {
    let mut registry = Registry::new(config.topology.as_ref(), config.heartbeat_timeout);
    let clusters = store.list(&keys.clusters()).await?;
    for kv in &clusters.items {
        let record: records::ClusterRecord =
            serde_json::from_slice(&kv.value).map_err(|e| LoadError {
                key: kv.key.clone(),
                reason: format!("not a cluster record: {e}"),
            })?;
        registry.register(record, false);
    }
    let mut state = State::new(keys.clone(), registry, config.policy.clone());
    let (jobs, tasks) = match only {
        None => (
            store.list(&keys.jobs()).await?.items,
            store.list(&keys.tasks()).await?.items,
        ),
        Some(name) => match store.get(&keys.job(name)).await? {
            Some(job) => (vec![job], store.list(&keys.job_tasks(name)).await?.items),
            None => (Vec::new(), Vec::new()),
        },
    };
    state.load(&jobs, &tasks)?;
    Ok(state)
}
