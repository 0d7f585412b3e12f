//! A store that tells an observer how each commit went: how many writes,
//! how many bytes, how long etcd took, and whether it went in.
//!
//! Every writer's commits go through [`Store::commit`] after being split
//! by [`batch`](crate::batch); wrapping the store once, where a service
//! opens it, sees all of them. The observer is a trait, so this crate knows
//! nothing of how the numbers are exported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{KeyValue, LeaseId, Revision, Snapshot, Store, StoreError, Write};

/// How a commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An expectation did not hold (or the fence moved): nothing changed.
    Conflict,
    /// Any other failure (etcd unreachable, a limit, a timeout).
    Error,
}

impl Outcome {
    fn of(r: &Result<Revision, StoreError>) -> Self {
        match r {
            Ok(_) => Outcome::Ok,
            Err(StoreError::Conflict { .. } | StoreError::Fenced(_)) => Outcome::Conflict,
            Err(_) => Outcome::Error,
        }
    }
}

/// Told of every commit; called on the committing task, so it must be
/// quick (a few atomic updates).
pub trait CommitObserver: Send + Sync + 'static {
    fn committed(&self, writes: usize, bytes: usize, took: Duration, outcome: Outcome);
}

/// `inner`, with every commit told to an observer.
pub struct Observed {
    inner: Arc<dyn Store>,
    observer: Arc<dyn CommitObserver>,
}

impl Observed {
    pub fn new(inner: Arc<dyn Store>, observer: Arc<dyn CommitObserver>) -> Self {
        Observed { inner, observer }
    }
}

#[async_trait]
impl Store for Observed {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.inner.list(prefix).await
    }

    async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError> {
        let start = Instant::now();
        let result = self.inner.commit(writes).await;
        let bytes = writes.iter().map(Write::size).sum();
        self.observer
            .committed(writes.len(), bytes, start.elapsed(), Outcome::of(&result));
        result
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

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Expect, MemStore};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(usize, Outcome)>>);

    impl CommitObserver for Seen {
        fn committed(&self, writes: usize, _bytes: usize, _took: Duration, outcome: Outcome) {
            self.0.lock().unwrap().push((writes, outcome));
        }
    }

    #[tokio::test]
    async fn every_commit_is_told_with_its_outcome() {
        let seen = Arc::new(Seen::default());
        let store = Observed::new(Arc::new(MemStore::new()), seen.clone());
        store
            .commit(&[
                Write::put("a", "1", Expect::Absent),
                Write::put("b", "2", Expect::Absent),
            ])
            .await
            .unwrap();
        store
            .commit(&[Write::put("a", "3", Expect::Absent)])
            .await
            .unwrap_err();
        store.get("a").await.unwrap();
        assert_eq!(
            *seen.0.lock().unwrap(),
            [(2, Outcome::Ok), (1, Outcome::Conflict)]
        );
    }
}
