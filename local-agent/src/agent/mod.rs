//! The local agent: one per cluster.
//!
//! # Layout
//! - [`state`]: machines, the queue of tasks handed over, placements, and
//!   the decisions over them (packing is `sched_core::pack`).
//! - [`service`]: the `Machines` gRPC service for node agents (and for the
//!   global scheduler's machine listings and log requests).
//! - this module: the planner (the one writer of placement keys), the
//!   machine-loss timer, and the connection to the global scheduler
//!   (register, heartbeat with jitter, assignment stream, reports).

pub mod service;
pub mod state;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sched_core::policy::Policy;
use sched_proto::leader::{LeaderChannel, LEADER_HEADER};
use sched_proto::pb;
use sched_proto::pb::clusters_client::ClustersClient;
use sched_proto::pb::machines_server::MachinesServer;
use sched_store::{Store, Write, MAX_OPS_PER_COMMIT};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sched_proto::backoff::{jitter, Backoff};
use state::AgentState;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: String,
    pub location: String,
    /// The global scheduler's URL.
    pub global: String,
    pub prefix: String,
    pub policy: Policy,
    /// How often node agents heartbeat.
    pub node_heartbeat: Duration,
    /// A node silent this long is lost, with its machines.
    pub machine_timeout: Duration,
    /// The address node agents and the global scheduler reach us at
    /// (defaults to the listener's).
    pub advertise: Option<String>,
}

pub struct Agent {
    state: Mutex<AgentState>,
    /// Wakes the planner.
    pub wake: Notify,
    /// Wakes the upstream loop (reports to send).
    pub upstream: Notify,
    pub config: AgentConfig,
    /// Fires when the agent shuts down: open streams end.
    pub shutdown: CancellationToken,
}

impl Agent {
    pub fn state(&self) -> MutexGuard<'_, AgentState> {
        // State changes are applied in single steps under the lock; a panic
        // elsewhere leaves it consistent enough to go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Loads placements, then serves node agents and follows the global
/// scheduler until `shutdown`.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut state = AgentState::new(
        &config.cluster,
        &config.prefix,
        config.policy.local.clone(),
        config.machine_timeout,
    );
    let snap = store.list(state.placements_prefix()).await?;
    state.load(&snap.items).map_err(anyhow::Error::msg)?;
    tracing::info!(cluster = %config.cluster, placements = snap.items.len(), "placements read back from the store");
    let address = config
        .advertise
        .clone()
        .unwrap_or(format!("http://{}", listener.local_addr()?));
    let agent = Arc::new(Agent {
        state: Mutex::new(state),
        wake: Notify::new(),
        upstream: Notify::new(),
        config,
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(planner(agent.clone(), store, shutdown.clone()));
    tracker.spawn(upstream(agent.clone(), address.clone(), shutdown.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MachinesServer<service::MachinesService>>()
        .await;
    tracing::info!(%address, "serving node agents");
    let serve = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(MachinesServer::new(service::MachinesService::new(
            agent.clone(),
        )))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    tokio::pin!(serve);
    // No longer than a few seconds after the signal: a client that keeps its
    // connection open must not hold the agent up.
    let result = tokio::select! {
        r = &mut serve => r,
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
    result?;
    Ok(())
}

/// The one writer of placement keys: expire silent nodes, pack the queue,
/// persist, then tell nodes and the global scheduler.
async fn planner(agent: Arc<Agent>, store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let batch = agent.config.policy.local.batch_size.max(1) as usize;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = agent.wake.notified() => {}
            _ = tick.tick() => {}
        }
        agent.state().expire(Instant::now());
        // Placements.
        let plan = agent.state().plan(batch);
        let mut writes = plan.writes;
        while !writes.is_empty() {
            let rest = writes.split_off(writes.len().min(MAX_OPS_PER_COMMIT));
            let chunk = std::mem::replace(&mut writes, rest);
            let ws: Vec<Write> = chunk.iter().map(|(_, _, w)| w.clone()).collect();
            match store.commit(&ws).await {
                Ok(rev) => agent.state().apply(chunk, rev),
                Err(e) => {
                    tracing::warn!(cause = %e, tasks = chunk.len(), "placements not persisted; will retry");
                    let keys: Vec<state::TaskKey> = chunk
                        .iter()
                        .chain(writes.iter())
                        .map(|(k, _, _)| k.clone())
                        .collect();
                    {
                        let mut st = agent.state();
                        st.revert(chunk);
                        st.revert(std::mem::take(&mut writes));
                    }
                    // A commit that failed as unavailable may have applied
                    // all the same; a conflict means the stored revision is
                    // not the one we hold. Either way, re-read the revisions
                    // so that the retry's guards match the store.
                    refresh_revisions(&agent, store.as_ref(), &keys).await;
                }
            }
        }
        // Final and lost states.
        loop {
            let dirty = agent.state().dirty_writes(MAX_OPS_PER_COMMIT);
            if dirty.is_empty() {
                break;
            }
            let ws: Vec<Write> = dirty.iter().map(|(_, w)| w.clone()).collect();
            match store.commit(&ws).await {
                Ok(rev) => {
                    let mut st = agent.state();
                    for (k, _) in &dirty {
                        st.set_rev(k, rev);
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "task states not persisted; will retry");
                    let keys: Vec<state::TaskKey> = dirty.iter().map(|(k, _)| k.clone()).collect();
                    {
                        let mut st = agent.state();
                        for (k, _) in dirty {
                            st.mark_dirty(k);
                        }
                    }
                    refresh_revisions(&agent, store.as_ref(), &keys).await;
                    break;
                }
            }
        }
        debug_assert!(agent.state().check().is_ok());
        agent.upstream.notify_one();
    }
}

/// Re-reads the stored revisions of some placements (after a commit whose
/// outcome is unknown, or that conflicted).
async fn refresh_revisions(agent: &Agent, store: &dyn Store, keys: &[state::TaskKey]) {
    for k in keys {
        let key = agent.state().placement_key(k);
        match store.get(&key).await {
            Ok(kv) => agent.state().refresh(k, kv),
            // Still unreachable: the next attempt tries again.
            Err(_) => return,
        }
    }
}

/// Task reports per `Report` call: a resync after registering reports every
/// placement, and one call stays far below gRPC's 4 MiB message limit.
const MAX_REPORTS_PER_CALL: usize = 4096;

/// The connection to the global scheduler, re-established with backoff.
/// `--global` may list several replicas: calls go to the one that leads (a
/// standby refuses to register and names the leader, which the next
/// attempt tries at once).
async fn upstream(agent: Arc<Agent>, address: String, shutdown: CancellationToken) {
    let channel = match LeaderChannel::new(
        &agent.config.global,
        Duration::from_secs(3),
        Duration::from_secs(30),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(cause = %e, "bad --global");
            return;
        }
    };
    let client = ClustersClient::new(channel.clone());
    let mut backoff = Backoff::new();
    let mut redirected = false;
    while !shutdown.is_cancelled() {
        match session(&agent, client.clone(), &address, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                let redirect = e
                    .downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.metadata().contains_key(LEADER_HEADER));
                if redirect && !redirected {
                    tracing::info!(leader = %channel.current(), "following the leader");
                    redirected = true;
                    continue;
                }
                redirected = false;
                tracing::warn!(cause = %e, "lost the global scheduler; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

async fn session(
    agent: &Arc<Agent>,
    mut client: ClustersClient<LeaderChannel>,
    address: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let cluster = agent.config.cluster.clone();
    let classes = agent.state().classes();
    let r = client
        .register_cluster(pb::RegisterClusterRequest {
            cluster: cluster.clone(),
            location: agent.config.location.clone(),
            classes,
            address: address.to_string(),
        })
        .await?
        .into_inner();
    let interval = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(50)));
    let mut stream = client
        .assignments(pb::AssignmentsRequest {
            cluster: cluster.clone(),
        })
        .await?
        .into_inner();
    tracing::info!(%cluster, "registered with the global scheduler");
    // The leader may be new, or reports may have died with a failed call or
    // an earlier run of this agent: tell it where every task stands.
    agent.state().resync_reports();
    let mut next_beat = tokio::time::Instant::now();
    let mut sent_classes: Vec<pb::MachineClassStatus> = Vec::new();
    loop {
        // Reports first: they are what the global scheduler waits for.
        let (tasks, handed_back) = {
            let mut st = agent.state();
            let n = st.reports.len().min(MAX_REPORTS_PER_CALL);
            (
                st.reports.drain(..n).collect::<Vec<_>>(),
                std::mem::take(&mut st.hand_backs),
            )
        };
        if !tasks.is_empty() || !handed_back.is_empty() {
            let req = pb::ReportRequest {
                cluster: cluster.clone(),
                tasks: tasks.clone(),
                handed_back: handed_back.clone(),
            };
            if let Err(e) = client.report(req).await {
                // Keep them for the next connection, in order.
                let mut st = agent.state();
                let later = std::mem::replace(&mut st.reports, tasks);
                st.reports.extend(later);
                let later = std::mem::replace(&mut st.hand_backs, handed_back);
                st.hand_backs.extend(later);
                return Err(e.into());
            }
        }
        // Heartbeat when due, or at once when machines came or went, so
        // the global scheduler sizes jobs against the machines there are.
        let hb = {
            let st = agent.state();
            let classes = st.classes();
            (tokio::time::Instant::now() >= next_beat || classes != sent_classes).then(|| {
                pb::HeartbeatRequest {
                    cluster: cluster.clone(),
                    classes,
                    allocated: Some(crate::to_pb(&st.allocated())),
                    queued: Some(crate::to_pb(&st.queued())),
                    queue_len: st.queue.len() as u64,
                    seq_seen: st.seq_seen,
                }
            })
        };
        if let Some(hb) = hb {
            sent_classes = hb.classes.clone();
            if client.heartbeat(hb).await?.into_inner().register_again {
                anyhow::bail!("the global scheduler asked to register again");
            }
            // Jitter: a tenth of the interval either way.
            next_beat =
                tokio::time::Instant::now() + interval - interval / 10 + jitter(interval / 5);
        }
        if !agent.state().reports.is_empty() {
            // More reports than one call carries: send the rest first.
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = agent.upstream.notified() => {}
            _ = tokio::time::sleep_until(next_beat) => {}
            batch = stream.next() => {
                let batch = match batch {
                    Some(b) => b?,
                    None => anyhow::bail!("assignment stream ended"),
                };
                agent.state().receive(batch);
                agent.wake.notify_one();
            }
        }
    }
}
