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
//! - [`policy`]: the policy in force, changed live by SIGHUP (the
//!   `--policy` file read again) or `ApplyPolicy`, stored for the next
//!   leader.
//! - [`convert`]: records to API messages.
//! - [`web`]: the read-only status page (`--http-listen`).
//! - [`service`]: the gRPC handlers (`clustersched.v1.SchedulerService`, `clustersched.internal.v1.Clusters`,
//!   and `grpc.health.v1.Health`; `grpc.reflection.v1` from `sched_proto`).
//! - [`metrics`]: the Prometheus families (`--metrics-listen`).
//!
//! [`run`] takes the listener, the store and a shutdown token, so tests can
//! start it on port 0 against any [`Store`].

pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod event;
pub mod events;
pub mod hub;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod records;
mod recovery;
pub mod registry;
pub mod service;
pub mod state;
pub mod submitter;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use sched_proto::pb::clusters_server::ClustersServer;
use sched_proto::pb::scheduler_service_server::SchedulerServiceServer;
use sched_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::error::RunError;
use crate::hub::{Limits, Shared};
use crate::keys::Keys;

pub use config::Config;
pub use records::now_unix_ms;
pub use sched_proto::backoff::jitter;

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
    let address = config.advertise.clone().unwrap_or(format!(
        "{}://{}",
        if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        listener.local_addr()?
    ));
    let role = Arc::new(service::Role::new(store.clone(), config.clone()));
    metrics::metrics().attach(&role);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<SchedulerServiceServer<service::SchedulerService>>()
        .await;
    health_reporter
        .set_not_serving::<ClustersServer<service::ClustersService>>()
        .await;
    tracing::info!(addr = %listener.local_addr()?, %address, "serving");
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| RunError::Tls(e.to_string()))?;
    }
    let serve = builder
        .layer(metrics::metrics().grpc.clone())
        .add_service(health_service)
        .add_service(sched_proto::reflection::service())
        .add_service(SchedulerServiceServer::new(service::SchedulerService::new(
            role.clone(),
        )))
        .add_service(ClustersServer::new(service::ClustersService::new(
            role.clone(),
        )))
        .serve_with_incoming_shutdown(
            sched_proto::process::incoming(listener),
            shutdown.clone().cancelled_owned(),
        );

    let tracker = TaskTracker::new();
    if let Some(addr) = &config.http_listen {
        let http = TcpListener::bind(addr).await?;
        let (role, shutdown) = (role.clone(), shutdown.clone());
        tracker.spawn(async move {
            if let Err(e) = web::serve(http, role, shutdown).await {
                tracing::error!(cause = %e, "the status page stopped");
            }
        });
    }
    if let Some(path) = config.policy_file.clone() {
        // Installed before serving: from now on SIGHUP re-reads the file
        // instead of killing the process.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let (role, shutdown) = (role.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hangups.recv() => if got.is_none() { return },
                }
                tracing::info!(file = %path.display(), "SIGHUP: reading the policy again");
                role.reload_file(&path).await;
            }
        });
    }
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
                metrics::metrics().leader.set(1);
                health
                    .set_serving::<SchedulerServiceServer<service::SchedulerService>>()
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
                // No longer the leader it names; the next campaign reads
                // who is.
                role.set_hint(String::new());
                metrics::metrics().leader.set(0);
                health
                    .set_not_serving::<SchedulerServiceServer<service::SchedulerService>>()
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
                role.set_hint(String::new());
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
    let ttl = Duration::from_secs(u64::from(role.policy().policy().ha.leader_lease_seconds));
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
    // The leader compacts etcd's history (unfenced: compacting is safe from
    // any replica, and a deposed leader's task stops with its term).
    let history = store.clone();
    // Every write from here on is fenced by the leader key.
    let store: Arc<dyn Store> = Arc::new(sched_store::Fenced::new(
        store.clone(),
        keys.leader(),
        leadership.revision,
        lost.clone(),
    ));
    let policy = role.take_over_policy(&store).await?;
    let state = recovery::load(&keys, &store, config, &policy).await?;
    let limits = Limits {
        queue: config.queue,
        max_pending_tasks: config.max_pending_tasks,
        max_jobs_per_submit: config.max_jobs_per_submit,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        pass_size: u64::from(policy.local.batch_size.max(1)),
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
    tracker.spawn(sched_store::compaction::run(
        history,
        policy.lifecycle.compaction_interval.as_duration(),
        leader_token.clone(),
    ));
    let (shared, rx, submissions) = Shared::new(state, limits, leader_token.clone(), store.clone());
    for s in submitter::Submitter::pool(shared.clone(), store.clone(), submissions) {
        tracker.spawn(s.run(leader_token.clone()));
    }
    tracker.spawn(events::run(
        shared.clone(),
        store.clone(),
        leader_token.clone(),
    ));
    tracker.spawn(Engine::new(shared.clone(), store, rx).run(leader_token));
    role.lead(shared);
    tracing::info!(
        revision = leadership.revision,
        ready_ms = elected.elapsed().as_millis() as u64,
        "leading"
    );
    Ok(true)
}
