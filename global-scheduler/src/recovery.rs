//! Reading the state back from the store: a new leader reads everything, a
//! standby the one job a read asks about.

use std::sync::Arc;

use sched_store::Store;

use crate::config::Config;
use crate::error::RunError;
use crate::keys::Keys;
use crate::records;
use crate::registry::Registry;
use crate::state::admission::LoadError;
use crate::state::State;

/// Reads clusters, jobs and tasks back from the store.
pub(crate) async fn load(
    keys: &Keys,
    store: &Arc<dyn Store>,
    config: &Config,
    policy: &sched_core::policy::Policy,
) -> Result<State, RunError> {
    let started = std::time::Instant::now();
    let state = load_state(keys, store, config, policy, None).await?;
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
    policy: &sched_core::policy::Policy,
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
    let mut state = State::new(keys.clone(), registry, policy.clone());
    let mut quotas = config.quotas.clone();
    for kv in store.list(&keys.quotas()).await?.items {
        let rest = kv.key.strip_prefix(&keys.quotas()).unwrap_or_default();
        let Some((tenant, band)) = rest.split_once('/') else {
            continue;
        };
        let limit: sched_core::quota::Limit =
            serde_json::from_slice(&kv.value).map_err(|e| LoadError {
                key: kv.key.clone(),
                reason: format!("not a quota: {e}"),
            })?;
        quotas.set(tenant, band, Some(limit));
    }
    state.set_quotas(quotas);
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
    // The events first: the jobs take their history as they are inserted,
    // and the `recovered` events get cursors after the stored ones.
    let (events, marks) = crate::events::load(keys, store, only).await?;
    state.load_events(events, marks.next, marks.dropped);
    state.load(&jobs, &tasks)?;
    Ok(state)
}
