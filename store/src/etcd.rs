//! The etcd store, over `etcd-client`.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::{
    check_commit, Expect, KeyValue, LeaseId, Op, Revision, Snapshot, Store, StoreError, Write,
};

/// Keys per page when listing a prefix: large prefixes (a million task keys)
/// would otherwise exceed gRPC's 4 MiB default message size in one response.
const LIST_PAGE: i64 = 10_000;

/// How long one call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A store in etcd (v3 API). Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdStore")
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            // Refuse reads and writes from a member cut off from its quorum
            // instead of serving stale data.
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(map_error)?;
        Ok(EtcdStore { client })
    }

    /// The underlying client, for what the trait does not cover (leases,
    /// watches).
    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

fn map_error(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => StoreError::Unavailable(e.to_string()),
        E::GRpcStatus(ref s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                StoreError::Unavailable(s.message().to_string())
            }
            // tonic's report of a connection that broke or could not be made.
            tonic::Code::Unknown if s.message().contains("transport error") => {
                StoreError::Unavailable(s.message().to_string())
            }
            tonic::Code::NotFound if s.message().contains("lease not found") => {
                StoreError::LeaseExpired(0)
            }
            _ => StoreError::Backend(format!("{:?}: {}", s.code(), s.message())),
        },
        E::LeaseKeepAliveError(ref m) if m.contains("lease not found") => {
            StoreError::LeaseExpired(0)
        }
        other => StoreError::Backend(other.to_string()),
    }
}

fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|e| StoreError::Backend(format!("key is not UTF-8: {e}")))?
            .to_string(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
    })
}

/// The first key after every key that starts with `prefix` (etcd's
/// `range_end` for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): the whole keyspace.
    vec![0]
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(map_error)?;
        resp.kvs().first().map(key_value).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let mut kv = self.client.kv_client();
        let end = prefix_end(prefix);
        let mut items = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                // Every page at the first page's revision: one consistent read.
                options = options.with_revision(revision);
            }
            let resp = kv
                .get(from.clone(), Some(options))
                .await
                .map_err(map_error)?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for item in resp.kvs() {
                items.push(key_value(item)?);
            }
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Snapshot { revision, items })
    }

    async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError> {
        check_commit(writes)?;
        let compares: Vec<Compare> = writes
            .iter()
            .filter_map(|w| match w.expect {
                Expect::Any => None,
                // A key that never existed (or was deleted) has create
                // revision 0.
                Expect::Absent => Some(Compare::create_revision(
                    w.key.as_str(),
                    CompareOp::Equal,
                    0,
                )),
                Expect::ModRevision(r) => {
                    Some(Compare::mod_revision(w.key.as_str(), CompareOp::Equal, r))
                }
            })
            .collect();
        let ops: Vec<TxnOp> = writes
            .iter()
            .filter_map(|w| match &w.op {
                Op::Put(v) => Some(TxnOp::put(w.key.as_str(), v.clone(), None)),
                Op::PutWithLease(v, lease) => Some(TxnOp::put(
                    w.key.as_str(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(*lease)),
                )),
                Op::Delete => Some(TxnOp::delete(w.key.as_str(), None)),
                Op::Check => None,
            })
            .collect();
        // On failure, read back the guarded keys to say which one moved.
        let guarded: Vec<&Write> = writes.iter().filter(|w| w.expect != Expect::Any).collect();
        let reads: Vec<TxnOp> = guarded
            .iter()
            .map(|w| TxnOp::get(w.key.as_str(), None))
            .collect();
        let txn = Txn::new().when(compares).and_then(ops).or_else(reads);
        let resp = self.client.kv_client().txn(txn).await.map_err(map_error)?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        for (w, op) in guarded.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            let actual = get.kvs().first().map(|kv| kv.mod_revision());
            if !w.expect.holds(actual) {
                return Err(StoreError::Conflict {
                    key: w.key.clone(),
                    expected: w.expect,
                    actual,
                });
            }
        }
        // The key changed between the failed compare and the read.
        let first = guarded.first().map_or(String::new(), |w| w.key.clone());
        Err(StoreError::Conflict {
            key: first,
            expected: guarded.first().map_or(Expect::Any, |w| w.expect),
            actual: None,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let r = self
            .client
            .lease_client()
            .grant(secs, None)
            .await
            .map_err(map_error)?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let (mut keeper, mut stream) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(map_error)?;
        keeper.keep_alive().await.map_err(map_error)?;
        match stream.message().await.map_err(map_error)? {
            // etcd answers a TTL of 0 for a lease it no longer has.
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseExpired(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) => match map_error(e) {
                StoreError::LeaseExpired(_) => Ok(()),
                other => Err(other),
            },
        }
    }
}
