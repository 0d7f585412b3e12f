//! A store whose every commit is fenced by a key that must not have moved.
//!
//! A leader elected through a lease-backed key (see the global scheduler's
//! `leader` module) wraps its store in [`Fenced`] with that key and the
//! revision it was created at. Every commit then carries a check that the
//! key is still the one it created: once the lease has expired and another
//! replica has taken over (re-creating the key), the old leader's writes
//! fail with [`StoreError::Fenced`] instead of landing. Two leaders can never
//! both write.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::{Expect, KeyValue, LeaseId, Revision, Snapshot, Store, StoreError, Write};

pub struct Fenced {
    inner: Arc<dyn Store>,
    key: String,
    revision: Revision,
    /// Cancelled when a commit finds the fence moved.
    lost: CancellationToken,
}

impl Fenced {
    pub fn new(
        inner: Arc<dyn Store>,
        key: String,
        revision: Revision,
        lost: CancellationToken,
    ) -> Self {
        Fenced {
            inner,
            key,
            revision,
            lost,
        }
    }
}

#[async_trait]
impl Store for Fenced {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.inner.list(prefix).await
    }

    async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError> {
        if self.lost.is_cancelled() {
            return Err(StoreError::Fenced(self.key.clone()));
        }
        let mut fenced = Vec::with_capacity(writes.len() + 1);
        fenced.push(Write::check(
            self.key.clone(),
            Expect::ModRevision(self.revision),
        ));
        fenced.extend_from_slice(writes);
        match self.inner.commit(&fenced).await {
            Err(StoreError::Conflict { key, .. }) if key == self.key => {
                self.lost.cancel();
                Err(StoreError::Fenced(key))
            }
            other => other,
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }

    async fn watch_key(&self, key: &str, seen: Revision) -> Result<(), StoreError> {
        self.inner.watch_key(key, seen).await
    }

    /// Not fenced: compaction changes no key, so a deposed leader's is
    /// harmless.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}
