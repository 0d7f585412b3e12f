//! Where the scheduler keeps its state.
//!
//! # Layout
//! - [`Store`]: a small key-value interface with revisions and guarded,
//!   atomic multi-key writes: what the services need of etcd and no more.
//! - [`EtcdStore`]: the real thing, over `etcd-client`.
//! - [`MemStore`]: the same semantics in memory, for dev mode and unit tests.
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

pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;

pub use error::StoreError;
pub use etcd::EtcdStore;
pub use mem::MemStore;

/// etcd's store revision: increases with every committed change.
pub type Revision = i64;

/// etcd's default `--max-txn-ops`: the most writes one commit may carry.
pub const MAX_OPS_PER_COMMIT: usize = 128;

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

/// One write of a commit: `value` `None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expect: Expect,
}

impl Write {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>, expect: Expect) -> Self {
        Write {
            key: key.into(),
            value: Some(value.into()),
            expect,
        }
    }

    pub fn delete(key: impl Into<String>, expect: Expect) -> Self {
        Write {
            key: key.into(),
            value: None,
            expect,
        }
    }

    /// Bytes this write adds to a request, for batching under
    /// [`MAX_COMMIT_BYTES`].
    pub fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len) + 16
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
    /// returns the new revision. At most [`MAX_OPS_PER_COMMIT`] writes, each
    /// key at most once. On a failed expectation nothing changes and the
    /// error names the first key that did not match.
    async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError>;
}

/// Checks the limits every backend enforces the same way.
fn check_commit(writes: &[Write]) -> Result<(), StoreError> {
    if writes.len() > MAX_OPS_PER_COMMIT {
        return Err(StoreError::TooLarge {
            what: "writes",
            size: writes.len(),
            limit: MAX_OPS_PER_COMMIT,
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
    let mut keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(StoreError::DuplicateKey(w[0].to_string()));
    }
    Ok(())
}
