//! Leader election among global scheduler replicas, through a lease-backed
//! key in etcd (`P/leader`).
//!
//! A replica campaigns by creating the key, guarded by `Absent`, attached to
//! a lease of `ha.leader_lease_seconds`. The winner renews the lease every
//! third of its TTL and fences every commit on the key's revision
//! ([`sched_store::Fenced`]). Standbys watch the key ([`Store::watch_key`]):
//! if the leader dies, its lease expires, the key vanishes, and the
//! standbys campaign at once, the first to create the key leading: a
//! takeover within the TTL (plus etcd's check of expired leases, every
//! 500 ms) of the leader's last renewal. A leader that cannot renew in
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
/// `role`'s hint pointing at the current leader: cleared while the key is
/// absent (an election is under way), this replica's own address from the
/// moment it wins (it serves as soon as its state is loaded).
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
    let mut announced = String::new();
    loop {
        let held = match store.get(key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => {
                role.set_hint(String::new());
                match try_lead(store, key, &value, ttl).await {
                    Ok(Some(l)) => {
                        role.set_hint(address.to_string());
                        return Some(l);
                    }
                    // Another replica won the race: read who.
                    Ok(None) => continue,
                    Err(e) => tracing::warn!(cause = %e, "cannot campaign for leadership"),
                }
                if !pause(ttl, shutdown).await {
                    return None;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read the leader key");
                if !pause(ttl, shutdown).await {
                    return None;
                }
                continue;
            }
        };
        match serde_json::from_slice::<LeaderRecord>(&held.value) {
            Ok(r) => {
                if announced != r.address {
                    tracing::info!(leader = %r.address, "standing by");
                    announced.clone_from(&r.address);
                }
                role.set_hint(r.address);
            }
            Err(e) => tracing::warn!(cause = %e, "the leader key holds no leader record"),
        }
        // Until the key changes: deleted (revoked, or its lease expired
        // with its leader) or put by a new leader. Read again every TTL
        // anyway, should a watch go quiet without ending.
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = tokio::time::timeout(ttl, store.watch_key(key, held.mod_revision)) => {
                if let Ok(Err(e)) = r {
                    tracing::warn!(cause = %e, "cannot watch the leader key");
                    if !pause(ttl, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// Waits about a third of `ttl` (jittered, so that replicas that failed
/// together do not retry in step) before trying the store again; false if
/// `shutdown` came first.
async fn pause(ttl: Duration, shutdown: &CancellationToken) -> bool {
    let wait = ttl / 3 - ttl / 12 + sched_proto::backoff::jitter(ttl / 6);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Creates the leader key, absent when read: the leadership if this
/// replica did, `None` if another one was first.
async fn try_lead(
    store: &Arc<dyn Store>,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<Option<Leadership>, StoreError> {
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

#[cfg(test)]
mod tests {
    use sched_store::MemStore;

    use super::*;

    const KEY: &str = "/t/leader";

    fn role(store: &Arc<dyn Store>) -> Arc<Role> {
        let config = crate::Config::new(sched_core::policy::Policy::default());
        Arc::new(Role::new(store.clone(), config))
    }

    /// The leader a standby's refusal names, if any.
    fn named(role: &Role) -> Option<String> {
        let refusal = role.leader().err()?;
        let leader = refusal.metadata().get(sched_proto::leader::LEADER_HEADER)?;
        Some(leader.to_str().ok()?.to_string())
    }

    /// A standby campaigns the moment the leader key is gone, not at a
    /// poll a third of the TTL later: with a 30 s TTL, it leads within 2 s
    /// of the old leader giving its lease up.
    #[tokio::test]
    async fn a_standby_campaigns_as_soon_as_the_leader_key_is_gone() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let ttl = Duration::from_secs(30);
        let shutdown = CancellationToken::new();
        let a = role(&store);
        let first = campaign(&store, KEY, "http://a:1", ttl, &a, &shutdown)
            .await
            .expect("the only replica wins");
        let b = role(&store);
        let standby = {
            let (store, b, shutdown) = (store.clone(), b.clone(), shutdown.clone());
            tokio::spawn(
                async move { campaign(&store, KEY, "http://b:1", ttl, &b, &shutdown).await },
            )
        };
        let start = Instant::now();
        while named(&b).as_deref() != Some("http://a:1") {
            assert!(start.elapsed() < Duration::from_secs(10), "b never named a");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.revoke_lease(first.lease).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(2), standby)
            .await
            .expect("b took over within 2 s")
            .unwrap()
            .expect("b leads");
        assert!(second.revision > first.revision);
        // It names itself while it loads its state.
        assert_eq!(named(&b).as_deref(), Some("http://b:1"));
    }
}
