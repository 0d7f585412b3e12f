//! `EtcdStore`'s own client: what the conformance suite does not reach
//! (no etcd at all, an endpoint without a scheme, a lease etcd never granted).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use sched_store::testing::start_etcd;
use sched_store::{EtcdStore, Expect, Store, StoreError, Write};

/// A loopback address nothing listens on (bound, then released).
fn closed_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn with_no_etcd_every_call_is_unavailable_and_fails_fast() {
    // Connecting is lazy: it succeeds with no etcd up.
    let store = EtcdStore::connect(&[closed_endpoint()]).await.unwrap();
    let start = Instant::now();
    let r = store.get("k").await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = store.commit(&[Write::put("k", "v", Expect::Any)]).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = store.grant_lease(Duration::from_secs(5)).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = store.keep_alive(1).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    // A refused connection is reported at once, not after the 5 s call
    // timeout.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn no_endpoints_is_an_error() {
    let r = EtcdStore::connect(&[]).await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
}

#[tokio::test]
#[ignore = "needs etcd"]
async fn endpoints_without_a_scheme_are_http() {
    let etcd = start_etcd();
    let url = etcd.url();
    let bare = url.trim_start_matches("http://").to_string();
    let store = EtcdStore::connect(&[bare]).await.unwrap();
    store
        .commit(&[Write::put("bare/k", "v", Expect::Absent)])
        .await
        .unwrap();
    assert_eq!(store.get("bare/k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test]
#[ignore = "needs etcd"]
async fn keep_alive_of_a_lease_etcd_never_granted_names_it() {
    let etcd = start_etcd();
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    let r = store.keep_alive(12345).await;
    assert_eq!(r, Err(StoreError::LeaseExpired(12345)));
    // Revoking it is done already.
    store.revoke_lease(12345).await.unwrap();
}

#[tokio::test]
#[ignore = "needs etcd"]
async fn a_dead_endpoint_among_live_ones_fails_no_call() {
    // One member of the list is down (nothing listens there): calls that
    // the balancer sends its way never reach it and go to a live one.
    let etcd = start_etcd();
    let store = EtcdStore::connect(&[closed_endpoint(), etcd.url()])
        .await
        .unwrap();
    for i in 0..40 {
        let key = format!("dead/{i}");
        store
            .commit(&[Write::put(key.as_str(), "v", Expect::Absent)])
            .await
            .unwrap_or_else(|e| panic!("commit {i}: {e}"));
        let got = store
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("get {i}: {e}"));
        assert_eq!(got.unwrap().value, b"v");
    }
    assert_eq!(store.list("dead/").await.unwrap().items.len(), 40);
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    store.keep_alive(lease).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
}
