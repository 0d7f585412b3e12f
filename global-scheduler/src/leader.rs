//! Leader election among global scheduler replicas, through a lease-backed
//! key in etcd (`P/leader`).
//!
//! A replica campaigns by creating the key, guarded by `Absent`, attached to
//! a lease of `ha.leader_lease_seconds`. The winner renews the lease every
//! third of its TTL and fences every commit on the key's revision
//! ([`sched_store::Fenced`]). If it dies, the lease expires, the key
//! vanishes, and the next standby to poll (every third of the TTL) creates
//! it: a takeover within about 1.3 x TTL. A leader that cannot renew in
//! time, or whose fence moved, stops: its writes could no longer land anyway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sched_store::{Expect, LeaseId, Revision, Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::service::Role;

/// What the leader key holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Where the leader serves gRPC.
    pub address: String,
    pub since_unix_ms: i64,
}

/// A won election.
#[derive(Debug, Clone, Copy)]
pub struct Leadership {
    /// The revision that created the leader key: the fence.
    pub revision: Revision,
    pub lease: LeaseId,
}

/// Campaigns until this replica leads (or `shutdown`). Meanwhile it keeps
/// `role`'s hint pointing at the current leader.
pub async fn campaign(
    store: &Arc<dyn Store>,
    key: &str,
    address: &str,
    ttl: Duration,
    role: &Role,
    shutdown: &CancellationToken,
) -> Option<Leadership> {
    let value = serde_json::to_vec(&LeaderRecord {
        address: address.to_string(),
        since_unix_ms: crate::records::now_unix_ms(),
    })
    .expect("leader records serialize");
    let mut announced = false;
    loop {
        match try_lead(store, key, &value, ttl).await {
            Ok(Some(l)) => return Some(l),
            Ok(None) => {
                if let Ok(Some(kv)) = store.get(key).await {
                    if let Ok(r) = serde_json::from_slice::<LeaderRecord>(&kv.value) {
                        if !announced {
                            tracing::info!(leader = %r.address, "standing by");
                            announced = true;
                        }
                        role.set_hint(r.address);
                    }
                }
            }
            Err(e) => tracing::warn!(cause = %e, "cannot campaign for leadership"),
        }
        let poll = ttl / 3 - ttl / 12 + sched_proto::backoff::jitter(ttl / 6);
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn try_lead(
    store: &Arc<dyn Store>,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<Option<Leadership>, StoreError> {
    // Cheap check first: no lease churn while a leader is alive.
    if store.get(key).await?.is_some() {
        return Ok(None);
    }
    let lease = store.grant_lease(ttl).await?;
    match store
        .commit(&[Write::put_with_lease(
            key,
            value.to_vec(),
            lease,
            Expect::Absent,
        )])
        .await
    {
        Ok(revision) => Ok(Some(Leadership { revision, lease })),
        Err(e) => {
            let _ = store.revoke_lease(lease).await;
            match e {
                StoreError::Conflict { .. } => Ok(None),
                e => Err(e),
            }
        }
    }
}

/// Renews the lease until `shutdown` (then gives it up at once, so a
/// standby takes over without waiting for the TTL) or until it cannot:
/// then cancels `lost`.
pub async fn keep_leading(
    store: Arc<dyn Store>,
    leadership: Leadership,
    ttl: Duration,
    lost: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            // Give the lease up at once: a standby takes over without
            // waiting for the TTL. (After a loss it is gone already; the
            // revoke is then a no-op.)
            _ = shutdown.cancelled() => {
                let _ = store.revoke_lease(leadership.lease).await;
                return;
            }
            _ = lost.cancelled() => {
                let _ = store.revoke_lease(leadership.lease).await;
                return;
            }
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        match store.keep_alive(leadership.lease).await {
            Ok(()) => renewed = Instant::now(),
            Err(StoreError::LeaseExpired(_)) => {
                tracing::error!("the leader lease expired: stepping down");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "cannot renew the leader lease");
                // Past the TTL the lease is gone on etcd's side too.
                if renewed.elapsed() >= ttl {
                    tracing::error!(
                        "could not renew the leader lease within its TTL: stepping down"
                    );
                    lost.cancel();
                    return;
                }
            }
        }
    }
}
