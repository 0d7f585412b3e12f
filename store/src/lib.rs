//! Where the scheduler keeps its state.
//!
//! # Layout
//! - [`Store`]: a small key-value interface with revisions and guarded,
//!   atomic multi-key writes: what the services need of etcd and no more.
//! - [`EtcdStore`]: the real thing, over our own small etcd v3 client
//!   (generated from `proto/`, etcd's API in part).
//! - [`MemStore`]: the same semantics in memory, for dev mode and unit tests.
//! - [`batch`]: the one way to split writes into commits within the
//!   count and byte limits; every writer uses it.
//! - [`Store::watch_key`]: waiting for a key to change (etcd's watch), for
//!   standbys waiting on the leader key.
//! - [`observe`]: a store that reports each commit's size, time and
//!   outcome to an observer (the services' metrics).
//! - [`compaction`]: a loop that compacts the store's history, one interval
//!   behind the newest revision.
//! - [`conformance`]: one suite of behaviour tests, run against both
//!   ([`store_conformance_suite!`]).
//! - `testing` (feature `testing`): starts a real etcd on free loopback ports.
//!
//! Every write names what it expects to find ([`Expect`]): the key absent,
//! or at a given modification revision. A commit whose expectations do not
//! all hold changes nothing and returns [`StoreError::Conflict`]; this is how
//! a retry, or a second scheduler, is stopped from placing a task twice.

mod error;
mod etcd;
mod mem;

pub mod batch;
pub mod compaction;
pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;

pub use batch::TooLarge;
pub use error::StoreError;
pub use etcd::{EtcdStore, EtcdTls};
pub use mem::MemStore;

pub mod fence;
pub use fence::Fenced;

pub mod observe;
pub mod pipeline;

/// etcd's store revision: increases with every committed change.
pub type Revision = i64;

/// A lease: keys put with it vanish when it expires or is revoked.
pub type LeaseId = i64;

/// etcd's default `--max-txn-ops`: the most operations one transaction may
/// carry.
pub const ETCD_MAX_TXN_OPS: usize = 128;

/// The most writes callers put in one commit: one operation of etcd's 128
/// is kept for a fence (see [`Write::check`]), which a leader adds to every
/// commit.
pub const MAX_OPS_PER_COMMIT: usize = ETCD_MAX_TXN_OPS - 1;

/// etcd's default `--max-request-bytes` is 1.5 MiB; keep a commit's keys and
/// values under this, leaving room for the request's framing.
pub const MAX_COMMIT_BYTES: usize = 1_400_000;

/// A stored key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: Revision,
    /// The revision that created the key.
    pub create_revision: Revision,
}

/// A consistent read of every key under a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision when the read was taken.
    pub revision: Revision,
    /// The keys in lexical order.
    pub items: Vec<KeyValue>,
}

/// What a write expects to find before it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything: an unconditional write.
    Any,
    /// The key does not exist.
    Absent,
    /// The key exists and was last changed at this revision.
    ModRevision(Revision),
}

impl Expect {
    /// Whether a key last changed at `actual` (`None`: absent) meets it.
    pub fn holds(self, actual: Option<Revision>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => actual.is_none(),
            Expect::ModRevision(r) => actual == Some(r),
        }
    }
}

/// What a write does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>),
    /// A put whose key vanishes with the lease.
    PutWithLease(Vec<u8>, LeaseId),
    Delete,
    /// Deletes every key that starts with the write's key (a prefix), in the
    /// same atomic commit as the other writes. Built by
    /// [`Write::delete_prefix`], whose expectation is [`Expect::Any`]: there
    /// is no single key to guard (another expectation would guard the one key
    /// named exactly like the prefix, in both backends).
    DeletePrefix,
    /// Nothing: only the expectation counts (a fence).
    Check,
}

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub op: Op,
    pub expect: Expect,
}

impl Write {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>, expect: Expect) -> Self {
        Write {
            key: key.into(),
            op: Op::Put(value.into()),
            expect,
        }
    }

    pub fn put_with_lease(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
        expect: Expect,
    ) -> Self {
        Write {
            key: key.into(),
            op: Op::PutWithLease(value.into(), lease),
            expect,
        }
    }

    pub fn delete(key: impl Into<String>, expect: Expect) -> Self {
        Write {
            key: key.into(),
            op: Op::Delete,
            expect,
        }
    }

    /// Deletes every key starting with `prefix` (`"a/b/"` takes `a/b/x` and
    /// `a/b/c/y`, not `a/bc`). Unguarded: guard the commit with the other
    /// writes' expectations or a [`Write::check`]. An empty prefix is every
    /// key. A commit may not also put a key under the prefix
    /// ([`StoreError::DuplicateKey`], as etcd refuses it); deletes of keys
    /// under it are fine.
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Write {
            key: prefix.into(),
            op: Op::DeletePrefix,
            expect: Expect::Any,
        }
    }

    /// Changes nothing; the commit applies only if `key` meets `expect`.
    pub fn check(key: impl Into<String>, expect: Expect) -> Self {
        Write {
            key: key.into(),
            op: Op::Check,
            expect,
        }
    }

    /// Bytes this write adds to a request, for batching under
    /// [`MAX_COMMIT_BYTES`].
    pub fn size(&self) -> usize {
        let value = match &self.op {
            Op::Put(v) | Op::PutWithLease(v, _) => v.len(),
            Op::Delete | Op::Check => 0,
            // No value, but the request carries the range's end beside the
            // prefix, and it is no longer than the prefix.
            Op::DeletePrefix => self.key.len(),
        };
        self.key.len() + value + 16
    }
}

/// The state store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key, or `None` if absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key under `prefix`, read at one revision.
    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError>;

    /// Applies `writes` atomically if each one's expectation holds, and
    /// returns the new revision. At most [`ETCD_MAX_TXN_OPS`] writes, each
    /// key at most once. On a failed expectation nothing changes and the
    /// error names the first key that did not match.
    async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError>;

    /// A new lease that lives `ttl` unless kept alive.
    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease for another TTL; [`StoreError::LeaseExpired`] if it
    /// is gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends a lease now; its keys vanish.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Discards the history before `revision`: the values keys had before
    /// it can no longer be read, nor watched from. The newest value of every
    /// key is kept. A revision already compacted is done (not an error);
    /// etcd refuses one newer than its own. [`compaction::run`] calls it
    /// periodically: without it etcd's history, and its database, grow
    /// until etcd refuses writes (its space quota). [`MemStore`] keeps no
    /// history and does nothing.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Returns once `key`, last read at modification revision `seen`, has
    /// changed: put again, or deleted (by a write, or with its lease). It
    /// may also return before that (a watch that ended): callers read the
    /// key again and decide. [`EtcdStore`] watches the key; this default
    /// reads it every [`WATCH_POLL`].
    async fn watch_key(&self, key: &str, seen: Revision) -> Result<(), StoreError> {
        loop {
            if self.get(key).await?.map(|kv| kv.mod_revision) != Some(seen) {
                return Ok(());
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    }
}

/// How often [`Store::watch_key`]'s default reads the key.
pub const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Checks the limits every backend enforces the same way.
fn check_commit(writes: &[Write]) -> Result<(), StoreError> {
    if writes.len() > ETCD_MAX_TXN_OPS {
        return Err(StoreError::TooLarge {
            what: "writes",
            size: writes.len(),
            limit: ETCD_MAX_TXN_OPS,
        });
    }
    let bytes: usize = writes.iter().map(Write::size).sum();
    if bytes > MAX_COMMIT_BYTES {
        return Err(StoreError::TooLarge {
            what: "bytes",
            size: bytes,
            limit: MAX_COMMIT_BYTES,
        });
    }
    // A prefix delete is a range, checked below; ranges may overlap each
    // other and single deletes, as in etcd.
    let mut keys: Vec<&str> = writes
        .iter()
        .filter(|w| w.op != Op::DeletePrefix)
        .map(|w| w.key.as_str())
        .collect();
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(StoreError::DuplicateKey(w[0].to_string()));
    }
    // etcd refuses a transaction that puts a key inside a range it deletes
    // ("duplicate key given in txn request"; seen with etcd 3.4).
    for prefix in writes.iter().filter(|w| w.op == Op::DeletePrefix) {
        if let Some(put) = writes.iter().find(|w| {
            matches!(w.op, Op::Put(_) | Op::PutWithLease(..)) && w.key.starts_with(&prefix.key)
        }) {
            return Err(StoreError::DuplicateKey(put.key.clone()));
        }
    }
    Ok(())
}
