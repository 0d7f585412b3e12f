//! The planner: the one writer of this cluster's keys. Each pass expires
//! silent nodes, packs the queue, writes the placements (and job specs and
//! task states) in commits the store's batcher sized, and only then tells
//! the nodes and the global scheduler.

use std::sync::Arc;
use std::time::Duration;

use sched_store::{Store, Write};
use tokio_util::sync::CancellationToken;

use super::shared::Agent;
use crate::error::AgentError;

/// A pass at least this often, to expire silent nodes and to retry what
/// did not get written; node reports and assignments wake it sooner.
const TICK: Duration = Duration::from_millis(200);

pub async fn run(agent: Arc<Agent>, store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Read at each pass: a SIGHUP may have changed it.
        let batch = agent.policy().local.batch_size.max(1) as usize;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = agent.wake.notified() => {}
            _ = tick.tick() => {}
        }
        pass(&agent, store.as_ref(), batch).await;
        debug_assert!(agent.check().is_ok());
        agent.upstream.notify_one();
    }
}

/// One pass: its commits in order; the first that fails ends it, and it
/// and the ones after it are undone.
async fn pass(agent: &Agent, store: &dyn Store, batch: usize) {
    let mut commits = agent.plan(batch).into_iter();
    while let Some(commit) = commits.next() {
        let writes: Vec<Write> = commit.iter().map(|c| c.write().clone()).collect();
        match store.commit(&writes).await {
            Ok(rev) => agent.applied(commit, rev),
            Err(e) => {
                let err = AgentError::from(e);
                tracing::warn!(cause = %err, writes = writes.len(), "not persisted; will retry or hand back");
                let rest = commit.into_iter().chain(commits.by_ref().flatten());
                let keys = agent.failed(rest.collect(), &err);
                // A commit that failed as unavailable may have applied all
                // the same; a conflict means the stored revision is not the
                // one we hold. Either way, re-read the revisions so that the
                // retry's guards match the store.
                refresh(agent, store, &keys).await;
                return;
            }
        }
    }
}

/// Re-reads what the store holds at `keys`.
async fn refresh(agent: &Agent, store: &dyn Store, keys: &[String]) {
    for key in keys {
        match store.get(key).await {
            Ok(kv) => agent.refresh(key, kv),
            // Still unreachable: the next attempt fails and tries again.
            Err(_) => return,
        }
    }
}
