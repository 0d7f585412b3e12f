//! The in-memory store: etcd's semantics (revisions, guarded atomic
//! commits) without durability. For dev mode and tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{check_commit, KeyValue, Revision, Snapshot, Store, StoreError, Write};

#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    revision: Revision,
    keys: BTreeMap<String, KeyValue>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated:
        // commits check every expectation before changing anything.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().keys.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let inner = self.lock();
        let items = inner
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok(Snapshot {
            revision: inner.revision,
            items,
        })
    }

    async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError> {
        check_commit(writes)?;
        let mut inner = self.lock();
        for w in writes {
            let actual = inner.keys.get(&w.key).map(|kv| kv.mod_revision);
            if !w.expect.holds(actual) {
                return Err(StoreError::Conflict {
                    key: w.key.clone(),
                    expected: w.expect,
                    actual,
                });
            }
        }
        // Like etcd, a commit that changes nothing still has a revision, and
        // one that changes anything bumps it once.
        if writes.is_empty() {
            return Ok(inner.revision);
        }
        inner.revision += 1;
        let revision = inner.revision;
        for w in writes {
            match &w.value {
                Some(value) => {
                    let create_revision = inner
                        .keys
                        .get(&w.key)
                        .map_or(revision, |kv| kv.create_revision);
                    inner.keys.insert(
                        w.key.clone(),
                        KeyValue {
                            key: w.key.clone(),
                            value: value.clone(),
                            mod_revision: revision,
                            create_revision,
                        },
                    );
                }
                None => {
                    inner.keys.remove(&w.key);
                }
            }
        }
        Ok(revision)
    }
}
