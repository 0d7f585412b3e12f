//! The planner: the one writer of this cluster's keys. Each pass expires
//! silent nodes, packs the queue, writes the placements (and job specs and
//! task states) in commits the store's batcher sized, and only then tells
//! the nodes and the global scheduler.

use std::sync::Arc;
use std::time::Duration;

use sched_store::pipeline::{self, Pending};
use sched_store::{Store, Write};
use tokio_util::sync::CancellationToken;

use super::change::Change;
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

/// One pass: its commits, several in flight at once (a job's spec and
/// deletes go alone, before what follows them). After the first that
/// fails, none more is sent; it and those not sent are undone.
async fn pass(agent: &Agent, store: &dyn Store, batch: usize) {
    let commits = agent.plan(batch).into_iter().map(|commit| {
        let writes: Vec<Write> = commit.iter().map(|c| c.write().clone()).collect();
        // A job's spec is in the store before its placements, and a
        // deleted job's keys are gone before a new job of its name meets
        // them.
        let barrier = commit
            .iter()
            .any(|c| matches!(c, Change::Spec { .. } | Change::Delete { .. }));
        let pending = Pending::new(writes, commit);
        if barrier {
            pending.barrier()
        } else {
            pending
        }
    });
    let mut undone: Vec<Change> = Vec::new();
    let mut first_failure = None;
    let not_sent = pipeline::commit_all(store, commits, pipeline::DEPTH, |commit, r| match r {
        Ok(rev) => agent.applied(commit, rev),
        Err(e) => {
            undone.extend(commit);
            first_failure.get_or_insert(e);
        }
    })
    .await;
    let Some(e) = first_failure else {
        return;
    };
    let err = AgentError::from(e);
    undone.extend(not_sent.into_iter().flatten());
    tracing::warn!(cause = %err, changes = undone.len(), "not persisted; will retry or hand back");
    // A commit that failed as unavailable may have applied all the same; a
    // conflict means the stored revision is not the one we hold. Either
    // way, re-read the revisions so that the retry's guards match the store.
    let keys = agent.failed(undone, &err);
    refresh(agent, store, &keys).await;
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
