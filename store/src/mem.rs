//! The in-memory store: etcd's semantics (revisions, guarded atomic
//! commits) without durability. For dev mode and tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{check_commit, KeyValue, LeaseId, Op, Revision, Snapshot, Store, StoreError, Write};

#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    revision: Revision,
    keys: BTreeMap<String, KeyValue>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    expires: Instant,
    keys: BTreeSet<String>,
}

impl Inner {
    /// Drops expired leases and their keys, as etcd does.
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        if let Some(l) = self.leases.remove(&id) {
            // A lease holds only keys that exist: deleting or re-putting a
            // key detaches it (see `remove` and `detach`).
            if !l.keys.is_empty() {
                self.revision += 1;
            }
            for k in l.keys {
                self.keys.remove(&k);
            }
        }
    }

    /// Takes `key` off the lease it was put with, if any: as in etcd, a key
    /// deleted, or put again without that lease, no longer vanishes with it.
    fn detach(&mut self, key: &str) {
        for l in self.leases.values_mut() {
            l.keys.remove(key);
        }
    }

    fn remove(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.detach(key);
        }
    }

    /// The stored keys that start with `prefix`, in order.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> {
        self.keys
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// Whether `op` on `key` would change anything.
    fn changes(&self, key: &str, op: &Op) -> bool {
        match op {
            Op::Put(_) | Op::PutWithLease(..) => true,
            Op::Delete => self.keys.contains_key(key),
            Op::DeletePrefix => self.under(key).next().is_some(),
            Op::Check => false,
        }
    }
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated:
        // commits check every expectation before changing anything.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire();
        inner
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().keys.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let inner = self.lock();
        let items = inner.under(prefix).cloned().collect();
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
        for w in writes {
            if let Op::PutWithLease(_, id) = w.op {
                if !inner.leases.contains_key(&id) {
                    return Err(StoreError::LeaseExpired(id));
                }
            }
        }
        // Like etcd, a commit that changes nothing (only checks, or deletes
        // of keys that are not there) keeps the revision, and one that
        // changes anything bumps it once.
        if !writes.iter().any(|w| inner.changes(&w.key, &w.op)) {
            return Ok(inner.revision);
        }
        inner.revision += 1;
        let revision = inner.revision;
        for w in writes {
            let (value, lease) = match &w.op {
                Op::Check => continue,
                Op::Delete => {
                    inner.remove(&w.key);
                    continue;
                }
                Op::DeletePrefix => {
                    let gone: Vec<String> = inner.under(&w.key).map(|kv| kv.key.clone()).collect();
                    for key in gone {
                        inner.remove(&key);
                    }
                    continue;
                }
                Op::Put(v) => (v, None),
                Op::PutWithLease(v, id) => (v, Some(*id)),
            };
            inner.detach(&w.key);
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
            if let Some(l) = lease.and_then(|id| inner.leases.get_mut(&id)) {
                l.keys.insert(w.key.clone());
            }
        }
        Ok(revision)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut inner = self.lock();
        inner.next_lease += 1;
        let id = inner.next_lease;
        inner.leases.insert(
            id,
            Lease {
                ttl,
                expires: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let l = inner
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseExpired(lease))?;
        l.expires = Instant::now() + l.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.lock().drop_lease(lease);
        Ok(())
    }

    /// Nothing to do: the in-memory store keeps no history, only each key's
    /// newest value.
    async fn compact(&self, _revision: Revision) -> Result<(), StoreError> {
        Ok(())
    }
}
