//! The connection to the global scheduler, re-established with backoff:
//! register, take assignments from the stream, send reports and
//! hand-backs, heartbeat (jittered) the machines and the queue.

use std::sync::Arc;
use std::time::Duration;

use sched_core::error::SpecError;
use sched_proto::backoff::{jitter, Backoff};
use sched_proto::leader::{LeaderChannel, LEADER_HEADER};
use sched_proto::pb;
use sched_proto::pb::clusters_client::ClustersClient;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::shared::Agent;
use crate::error::AgentError;

/// Task reports per `Report` call: a resync after registering reports every
/// placement, and one call stays far below gRPC's 4 MiB message limit.
const MAX_REPORTS_PER_CALL: usize = 4096;

/// Follows the global scheduler until `shutdown`. `--global` may list
/// several replicas: calls go to the one that leads (a standby refuses to
/// register and names the leader, which the next attempt tries at once).
pub async fn run(agent: Arc<Agent>, address: String, shutdown: CancellationToken) {
    let channel = match LeaderChannel::with_tls(
        &agent.config.global,
        agent.config.tls.clone(),
        Duration::from_secs(3),
        Duration::from_secs(30),
    ) {
        Ok(c) => c,
        Err(reason) => {
            let err = AgentError::from(SpecError::new("--global", reason.to_string()));
            tracing::error!(cause = %err, "cannot follow the global scheduler");
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
                    .status()
                    .is_some_and(|s| s.metadata().contains_key(LEADER_HEADER));
                if redirect && !redirected {
                    tracing::info!(leader = %channel.current(), "following the leader");
                    redirected = true;
                    continue;
                }
                redirected = false;
                agent.session_failed();
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
) -> Result<(), AgentError> {
    let cluster = agent.config.cluster.clone();
    let r = client
        .register_cluster(pb::RegisterClusterRequest {
            cluster: cluster.clone(),
            location: agent.config.location.clone(),
            classes: agent.classes(),
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
    agent.resync_reports();
    let mut next_beat = tokio::time::Instant::now();
    let mut sent_classes: Vec<pb::MachineClassStatus> = Vec::new();
    loop {
        // Reports first: they are what the global scheduler waits for.
        let out = agent.take_reports(MAX_REPORTS_PER_CALL);
        if !out.is_empty() {
            let req = pb::ReportRequest {
                cluster: cluster.clone(),
                tasks: out.tasks.clone(),
                handed_back: out.hand_backs.clone(),
            };
            if let Err(e) = client.report(req).await {
                // Kept for the next connection, in order.
                agent.put_back_reports(out);
                return Err(e.into());
            }
            // Committed by the global scheduler: what ended is garbage.
            agent.reports_delivered(&out.tasks);
        }
        // Heartbeat when due, or at once when machines came or went, so
        // the global scheduler sizes jobs against the machines there are.
        let classes = agent.classes();
        if tokio::time::Instant::now() >= next_beat || classes != sent_classes {
            let hb = agent.heartbeat_request();
            sent_classes = hb.classes.clone();
            if client.heartbeat(hb).await?.into_inner().register_again {
                return Err(AgentError::SessionEnded(
                    "the global scheduler asked to register again",
                ));
            }
            // Jitter: a tenth of the interval either way.
            next_beat =
                tokio::time::Instant::now() + interval - interval / 10 + jitter(interval / 5);
        }
        if agent.pending_reports() > 0 {
            // More reports than one call carries: send the rest first.
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = agent.upstream.notified() => {}
            _ = tokio::time::sleep_until(next_beat) => {}
            batch = stream.next() => match batch {
                Some(b) => agent.receive(b?),
                None => return Err(AgentError::SessionEnded("assignment stream ended")),
            },
        }
    }
}
