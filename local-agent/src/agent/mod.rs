//! The local agent: one per cluster.
//!
//! # Layout
//! - [`state`]: the decisions, over parts that each keep their own rules:
//!   [`inventory`] (machines and the cell), [`intent`] (placements and
//!   their revisions), [`specs`] (each job's spec, once), [`queue`]
//!   (tasks waiting), [`reports`] (what the global scheduler is to hear),
//!   [`links`] (work streams to node agents); [`packing`] puts waiting
//!   tasks on machines (`sched_core::pack`), [`keys`] says where things
//!   are stored, and [`change`] what each write means.
//! - [`shared`]: the state behind its lock, and the signals between the
//!   loops, shared by:
//! - [`planner`]: the one writer of this cluster's keys (commits are
//!   sized by `sched_store::batch`);
//! - [`upstream`]: the connection to the global scheduler;
//! - [`service`]: the `Machines` gRPC service for node agents (and for the
//!   global scheduler's machine listings and log requests).
//! - this module: [`run`], which starts them and stops them in order.

pub mod change;
pub mod config;
pub mod intent;
pub mod inventory;
pub mod keys;
pub mod links;
pub mod packing;
pub mod planner;
pub mod queue;
pub mod reports;
pub mod service;
pub mod shared;
pub mod specs;
pub mod state;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sched_proto::pb::machines_server::MachinesServer;
use sched_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::AgentConfig;
use shared::Agent;
use state::AgentState;

use crate::error::AgentError;

/// Reads the `--policy` file again (SIGHUP): validated first; a bad file is
/// refused with the reason logged and the policy in force kept.
fn reload_policy(agent: &Agent, path: &std::path::Path) {
    use sched_proto::metrics::policy::Outcome;
    let read = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|text| {
            sched_core::policy::Policy::from_yaml(&text)
                .map_err(|e| format!("invalid {}: {e}", path.display()))
        });
    match read {
        Ok(p) if p == agent.policy() => {
            tracing::info!(file = %path.display(), "SIGHUP: policy unchanged");
            crate::metrics::agent().policy.observe(Outcome::Unchanged);
        }
        Ok(p) => {
            agent.set_policy(p);
            tracing::info!(file = %path.display(), "SIGHUP: policy reloaded");
            crate::metrics::agent().policy.observe(Outcome::Applied);
        }
        Err(why) => {
            tracing::error!(cause = %why, "SIGHUP: policy refused; the policy in force stays");
            crate::metrics::agent().policy.observe(Outcome::Refused);
        }
    }
}

/// Loads placements, then serves node agents and follows the global
/// scheduler until `shutdown`.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut state = AgentState::new(
        &config.cluster,
        &config.prefix,
        config.policy.local.clone(),
        config.machine_timeout,
        Instant::now(),
    )
    .with_bands(config.policy.priority.clone());
    let snap = store.list(state.prefix()).await?;
    state.load(&snap.items)?;
    tracing::info!(cluster = %config.cluster, keys = snap.items.len(), "placements read back from the store");
    let address = match &config.advertise {
        Some(a) => a.clone(),
        None => {
            let local = listener
                .local_addr()
                .map_err(|e| AgentError::io("the listener's address", e))?;
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{local}")
        }
    };
    let agent = Arc::new(Agent::new(state, config, shutdown.clone()));
    let tracker = TaskTracker::new();
    if let Some(path) = agent.config.policy_file.clone() {
        // Installed before serving: from now on SIGHUP re-reads the file
        // instead of killing the process.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| AgentError::io("SIGHUP handler", e))?;
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hangups.recv() => if got.is_none() { return },
                }
                reload_policy(&agent, &path);
            }
        });
    }
    tracker.spawn(planner::run(agent.clone(), store, shutdown.clone()));
    tracker.spawn(upstream::run(
        agent.clone(),
        address.clone(),
        shutdown.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MachinesServer<service::MachinesService>>()
        .await;
    tracing::info!(%address, "serving node agents");
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = &agent.config.tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(AgentError::Serve)?;
    }
    let serve = builder
        .layer(crate::metrics::agent().grpc.clone())
        .add_service(health_service)
        .add_service(sched_proto::reflection::service())
        .add_service(MachinesServer::new(service::MachinesService::new(
            agent.clone(),
        )))
        .serve_with_incoming_shutdown(
            sched_proto::process::incoming(listener),
            shutdown.clone().cancelled_owned(),
        );
    tokio::pin!(serve);
    // No longer than a few seconds after the signal: a client that keeps its
    // connection open must not hold the agent up.
    let result = tokio::select! {
        r = &mut serve => r.map_err(AgentError::Serve),
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => Ok(()),
    };
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("the planner did not stop within 10 s");
    }
    result
}
