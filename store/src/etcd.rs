//! The etcd store, over our own small etcd v3 client.
//!
//! The client is generated from `proto/` (the part of etcd's gRPC API this
//! store calls: KV.Range, KV.Txn, KV.Compact, three Lease calls and
//! Watch.Watch) by
//! `build.rs`, with protox: so building needs no `protoc`, which the
//! `etcd-client` crate's build script required.

use std::time::Duration;

use async_trait::async_trait;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::{
    check_commit, Expect, KeyValue, LeaseId, Op, Revision, Snapshot, Store, StoreError, Write,
};

/// The code generated from `proto/`: etcd's own package names, which the
/// generated code refers to each other by (`super::mvccpb::KeyValue`).
mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    request_op::Request,
    response_op::Response,
    watch_client::WatchClient,
    watch_request::RequestUnion,
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use tokio_stream::StreamExt as _;

/// Keys per page when listing a prefix: large prefixes (a million task keys)
/// would otherwise exceed gRPC's 4 MiB default message size in one response.
const LIST_PAGE: i64 = 10_000;

/// How long one call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 pings on an open connection every 5 s, and a connection whose ping
/// goes unanswered for 3 s is dropped: a dead member is noticed within
/// seconds even when no call is under way, rather than at the next call's
/// timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// etcd's answer when the lease named does not exist (any more): its
/// `ErrGRPCLeaseNotFound`, code NotFound, message
/// "etcdserver: requested lease not found".
const LEASE_NOT_FOUND: &str = "lease not found";

/// etcd's answer to a compaction, or a read, at a revision older than the
/// last compaction: its `ErrGRPCCompacted`, code OutOfRange, message
/// "etcdserver: mvcc: required revision has been compacted".
const COMPACTED: &str = "required revision has been compacted";

type EtcdChannel = InterceptedService<Channel, RequireLeader>;

/// A store in etcd (v3 API). Cheap to clone: clones share the connections.
///
/// One channel per endpoint; calls go to the current one, and a call whose
/// connection could not be made (so etcd never saw it, and trying again
/// cannot apply it twice) moves on to the next endpoint and is tried there,
/// once per endpoint at most. So a dead member of the list costs a refused
/// connection now and then, not failed calls.
#[derive(Clone)]
pub struct EtcdStore {
    members: std::sync::Arc<[Member]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone)]
struct Member {
    kv: KvClient<EtcdChannel>,
    lease: LeaseClient<EtcdChannel>,
    watch: WatchClient<EtcdChannel>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdStore")
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`, or
    /// `host:port`). Calls are balanced over the endpoints that answer.
    /// Connections are made lazily, on the first call: connecting succeeds
    /// with every endpoint down, and calls fail with
    /// [`StoreError::Unavailable`] until one is up.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        EtcdStore::connect_tls(endpoints, None).await
    }

    /// As [`EtcdStore::connect`], over TLS when `tls` is given (then every
    /// endpoint is dialled as `https://`).
    pub async fn connect_tls(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
    ) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoints".to_string()));
        }
        let members = endpoints
            .iter()
            .map(|url| {
                let channel = endpoint(url, tls)?.connect_lazy();
                Ok(Member {
                    kv: KvClient::with_interceptor(channel.clone(), RequireLeader),
                    lease: LeaseClient::with_interceptor(channel.clone(), RequireLeader),
                    watch: WatchClient::with_interceptor(channel, RequireLeader),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(EtcdStore {
            members: members.into(),
            current: Default::default(),
        })
    }

    /// Runs `call` on the current member; while its connection cannot be
    /// made, on the next ones (each at most once).
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Member) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        use std::sync::atomic::Ordering;
        let n = self.members.len();
        let mut at = self.current.load(Ordering::Relaxed) % n;
        let mut tries = 0;
        loop {
            match call(self.members[at].clone()).await {
                Err(s) if tries + 1 < n && not_sent(&s) => {
                    tries += 1;
                    at = (at + 1) % n;
                    self.current.store(at, Ordering::Relaxed);
                }
                r => return r,
            }
        }
    }
}

/// Whether a call failed before it reached etcd: the connection was refused
/// (its cause, somewhere in the status's source chain, is an I/O error of
/// that kind). Then nothing was applied and the call can go elsewhere.
fn not_sent(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// TLS to etcd: the CA that signed etcd's certificate and, for etcd's
/// `--client-cert-auth`, a client certificate and key (all PEM).
#[derive(Clone)]
pub struct EtcdTls {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdTls {
    fn config(&self) -> tonic::transport::ClientTlsConfig {
        let c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => c.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => c,
        }
    }
}

/// One endpoint with the connection's timeouts and keep-alive.
fn endpoint(url: &str, tls: Option<&EtcdTls>) -> Result<Endpoint, StoreError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let url = match (url.starts_with("https://"), tls) {
        (true, None) => {
            return Err(StoreError::Backend(format!(
                "{url}: https:// needs --etcd-ca (it never falls back to plaintext)"
            )))
        }
        (_, Some(_)) => format!("https://{rest}"),
        (false, None) => format!("http://{rest}"),
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| StoreError::Backend(format!("bad etcd endpoint {url}: {e}")))?;
    if let Some(t) = tls {
        endpoint = endpoint
            .tls_config(t.config())
            .map_err(|e| StoreError::Backend(format!("etcd TLS for {url}: {e}")))?;
    }
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT))
}

/// Adds `hasleader: true` to every request, etcd's `WithRequireLeader`: a
/// member cut off from its quorum refuses reads and writes (Unavailable,
/// "no leader") instead of serving stale data.
#[derive(Clone, Copy)]
struct RequireLeader;

impl tonic::service::Interceptor for RequireLeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("hasleader", AsciiMetadataValue::from_static("true"));
        Ok(request)
    }
}

/// Whether a status stands for a transport failure (its source chain holds
/// a `tonic::transport::Error`), not for an answer from etcd.
fn from_transport(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn map_error(s: tonic::Status) -> StoreError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            StoreError::Unavailable(s.message().to_string())
        }
        // A connection that broke or could not be made: tonic reports it
        // with the transport's error as the status's source.
        tonic::Code::Unknown if from_transport(&s) => {
            StoreError::Unavailable(s.message().to_string())
        }
        tonic::Code::NotFound if s.message().contains(LEASE_NOT_FOUND) => {
            StoreError::LeaseExpired(0)
        }
        _ => StoreError::Backend(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn key_value(kv: pb::mvccpb::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key)
            .map_err(|e| StoreError::Backend(format!("key is not UTF-8: {e}")))?,
        value: kv.value,
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
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

/// A compare that `key`'s create or modification revision equals the one
/// given.
fn revision_equals(key: &str, revision: TargetUnion) -> Compare {
    let target = match revision {
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
    };
    Compare {
        result: CompareResult::Equal.into(),
        target: target.into(),
        key: key.as_bytes().to_vec(),
        target_union: Some(revision),
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// Deletes every key that starts with `prefix`.
fn delete_prefix(prefix: &str) -> DeleteRangeRequest {
    // etcd refuses an empty key; "\0" to "\0" is its way to say every key
    // (etcd's `WithPrefix` on an empty key does the same).
    let key = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    DeleteRangeRequest {
        key,
        range_end: prefix_end(prefix),
    }
}

fn put(key: &str, value: &[u8], lease: LeaseId) -> RequestOp {
    op(Request::RequestPut(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        lease,
    }))
}

impl EtcdStore {
    /// One key's range read: its value and the store's revision.
    async fn range_key(&self, key: &str) -> Result<RangeResponse, StoreError> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        Ok(self
            .call(|mut m| {
                let request = request.clone();
                async move { m.kv.range(request).await }
            })
            .await
            .map_err(map_error)?
            .into_inner())
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.range_key(key).await?;
        resp.kvs.into_iter().next().map(key_value).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let end = prefix_end(prefix);
        let mut items = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let request = RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: LIST_PAGE,
                // Every page at the first page's revision (0, the newest,
                // for the first): one consistent read.
                revision,
            };
            let resp = self
                .call(|mut m| {
                    let request = request.clone();
                    async move { m.kv.range(request).await }
                })
                .await
                .map_err(map_error)?
                .into_inner();
            if revision == 0 {
                revision = resp.header.map_or(0, |h| h.revision);
            }
            let next = match (resp.more, resp.kvs.last()) {
                (true, Some(last)) => {
                    let mut next = last.key.clone();
                    next.push(0);
                    Some(next)
                }
                _ => None,
            };
            for item in resp.kvs {
                items.push(key_value(item)?);
            }
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(Snapshot { revision, items })
    }

    async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError> {
        check_commit(writes)?;
        let compare: Vec<Compare> = writes
            .iter()
            .filter_map(|w| match w.expect {
                Expect::Any => None,
                // A key that never existed (or was deleted) has create
                // revision 0.
                Expect::Absent => Some(revision_equals(&w.key, TargetUnion::CreateRevision(0))),
                Expect::ModRevision(r) => {
                    Some(revision_equals(&w.key, TargetUnion::ModRevision(r)))
                }
            })
            .collect();
        let success: Vec<RequestOp> = writes
            .iter()
            .filter_map(|w| match &w.op {
                Op::Put(v) => Some(put(&w.key, v, 0)),
                Op::PutWithLease(v, lease) => Some(put(&w.key, v, *lease)),
                Op::Delete => Some(op(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: w.key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                }))),
                Op::DeletePrefix => Some(op(Request::RequestDeleteRange(delete_prefix(&w.key)))),
                Op::Check => None,
            })
            .collect();
        // On failure, read back the guarded keys to say which one moved.
        let guarded: Vec<&Write> = writes.iter().filter(|w| w.expect != Expect::Any).collect();
        let failure: Vec<RequestOp> = guarded
            .iter()
            .map(|w| {
                op(Request::RequestRange(RangeRequest {
                    key: w.key.as_bytes().to_vec(),
                    ..Default::default()
                }))
            })
            .collect();
        let request = TxnRequest {
            compare,
            success,
            failure,
        };
        let resp = self
            .call(|mut m| {
                let request = request.clone();
                async move { m.kv.txn(request).await }
            })
            .await
            .map_err(map_error)?
            .into_inner();
        if resp.succeeded {
            return Ok(resp.header.map_or(0, |h| h.revision));
        }
        for (w, op) in guarded.iter().zip(resp.responses) {
            let Some(Response::ResponseRange(range)) = op.response else {
                continue;
            };
            let actual = range.kvs.first().map(|kv| kv.mod_revision);
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
        let resp = self
            .call(|mut m| async move { m.lease.lease_grant(LeaseGrantRequest { ttl: secs }).await })
            .await
            .map_err(map_error)?
            .into_inner();
        Ok(resp.id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One request on etcd's bidirectional keep-alive stream, then the
        // request side closes: etcd answers it before it sees the end of the
        // stream, and the stream ends.
        let answer = async {
            let mut responses = self
                .call(|mut m| async move {
                    let request = tokio_stream::once(LeaseKeepAliveRequest { id: lease });
                    m.lease.lease_keep_alive(request).await
                })
                .await
                .map_err(map_error)?
                .into_inner();
            responses.message().await.map_err(map_error)
        };
        // The call's timeout covers the response's headers only, not its
        // messages.
        let answer = tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| StoreError::Unavailable("lease keep-alive timed out".to_string()))?;
        match answer {
            // etcd answers a TTL of 0 for a lease it no longer has.
            Ok(Some(r)) if r.ttl > 0 => Ok(()),
            Ok(_) | Err(StoreError::LeaseExpired(_)) => Err(StoreError::LeaseExpired(lease)),
            Err(e) => Err(e),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let result = self
            .call(
                |mut m| async move { m.lease.lease_revoke(LeaseRevokeRequest { id: lease }).await },
            )
            .await;
        match result.map_err(map_error) {
            // Revoking a lease that is already gone is done.
            Ok(_) | Err(StoreError::LeaseExpired(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        // Not `physical`: etcd answers once the compaction is committed
        // through raft and applies it in the background; reads below the
        // revision are refused from then on.
        let request = CompactionRequest {
            revision,
            physical: false,
        };
        let result = self
            .call(|mut m| async move { m.kv.compact(request).await })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Compacted already (by us, another replica, or etcd's own
            // auto-compaction): what was asked is done.
            Err(s) if already_compacted(&s) => Ok(()),
            Err(s) => Err(map_error(s)),
        }
    }

    async fn watch_key(&self, key: &str, seen: Revision) -> Result<(), StoreError> {
        loop {
            // Watch from the revision of a fresh read of the key, not from
            // `seen`: that one may be older than the last compaction.
            let read = self.range_key(key).await?;
            if read.kvs.first().map(|kv| kv.mod_revision) != Some(seen) {
                return Ok(());
            }
            let from = read.header.map_or(0, |h| h.revision) + 1;
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.as_bytes().to_vec(),
                    start_revision: from,
                })),
            };
            let mut responses = self
                .call(|mut m| {
                    // The request side stays open while the watch lasts,
                    // as etcd's own client keeps it; dropping the answer
                    // stream ends the call.
                    let requests = tokio_stream::once(create.clone())
                        .chain(tokio_stream::pending::<WatchRequest>());
                    async move { m.watch.watch(requests).await }
                })
                .await
                .map_err(map_error)?
                .into_inner();
            loop {
                match responses.message().await.map_err(map_error)? {
                    // The stream ended: the caller reads the key again.
                    None => return Ok(()),
                    Some(r) if !r.events.is_empty() => return Ok(()),
                    // Compacted past `from` meanwhile: read and watch again.
                    Some(r) if r.canceled && r.compact_revision > 0 => break,
                    Some(r) if r.canceled => {
                        return Err(StoreError::Unavailable(format!(
                            "watch of {key} canceled: {}",
                            r.cancel_reason
                        )))
                    }
                    // Created, or a progress report.
                    Some(_) => {}
                }
            }
        }
    }
}

/// Whether etcd refused a revision because its history was compacted past
/// it.
fn already_compacted(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::OutOfRange && s.message().contains(COMPACTED)
}

#[cfg(test)]
impl EtcdStore {
    /// `key` as it was at `revision`: only tests read the past, to see that
    /// it is gone after a compaction.
    pub(crate) async fn get_at(
        &self,
        key: &str,
        revision: Revision,
    ) -> Result<Option<KeyValue>, StoreError> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            revision,
            ..Default::default()
        };
        let resp = self
            .call(|mut m| {
                let request = request.clone();
                async move { m.kv.range(request).await }
            })
            .await
            .map_err(map_error)?
            .into_inner();
        resp.kvs.into_iter().next().map(key_value).transpose()
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    #[test]
    fn every_request_requires_a_leader() {
        let request = RequireLeader.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request
                .metadata()
                .get("hasleader")
                .map(|v| v.to_str().unwrap()),
            Some("true")
        );
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end("a/b"), b"a/c");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn a_prefix_delete_is_the_prefixs_range() {
        let d = delete_prefix("a/b/");
        assert_eq!(
            (d.key.as_slice(), d.range_end.as_slice()),
            (&b"a/b/"[..], &b"a/b0"[..])
        );
        // Every key: etcd's "\0" to "\0".
        let d = delete_prefix("");
        assert_eq!((d.key, d.range_end), (vec![0], vec![0]));
    }

    #[test]
    fn only_etcds_compacted_answer_is_already_compacted() {
        let s =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert!(already_compacted(&s));
        let s =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision is a future revision");
        assert!(!already_compacted(&s));
        assert!(matches!(map_error(s), StoreError::Backend(_)));
    }

    #[test]
    fn etcds_lease_not_found_is_lease_expired() {
        let s = tonic::Status::not_found("etcdserver: requested lease not found");
        assert_eq!(map_error(s), StoreError::LeaseExpired(0));
        let s = tonic::Status::unavailable("etcdserver: no leader");
        assert!(matches!(map_error(s), StoreError::Unavailable(_)));
        let s = tonic::Status::invalid_argument("etcdserver: too many operations in txn request");
        assert!(matches!(map_error(s), StoreError::Backend(_)));
    }
}
