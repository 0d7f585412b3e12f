//! One behaviour suite for every [`Store`]: [`store_conformance_suite!`]
//! instantiates it as `#[tokio::test]`s for a backend, so the in-memory store
//! is held to what etcd does.
//!
//! Each check takes a fresh store and a key prefix of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::{Expect, Store, StoreError, Write, MAX_OPS_PER_COMMIT};

fn put(key: &str, value: &str, expect: Expect) -> Write {
    Write::put(key, value.as_bytes().to_vec(), expect)
}

pub async fn get_missing_is_none(s: &Arc<dyn Store>, p: &str) {
    assert_eq!(s.get(&format!("{p}/nothing")).await.unwrap(), None);
}

pub async fn put_then_get(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}/a");
    let rev = s.commit(&[put(&key, "1", Expect::Absent)]).await.unwrap();
    let kv = s.get(&key).await.unwrap().expect("written");
    assert_eq!(kv.value, b"1");
    assert_eq!(kv.mod_revision, rev);
    assert_eq!(kv.create_revision, rev);
}

pub async fn absent_guard_refuses_existing_key(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}/a");
    let rev = s.commit(&[put(&key, "1", Expect::Absent)]).await.unwrap();
    let err = s
        .commit(&[put(&key, "2", Expect::Absent)])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            key: key.clone(),
            expected: Expect::Absent,
            actual: Some(rev)
        }
    );
    assert_eq!(s.get(&key).await.unwrap().unwrap().value, b"1");
}

pub async fn revision_guard_is_compare_and_swap(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}/a");
    let r1 = s.commit(&[put(&key, "1", Expect::Absent)]).await.unwrap();
    let r2 = s
        .commit(&[put(&key, "2", Expect::ModRevision(r1))])
        .await
        .unwrap();
    assert!(r2 > r1);
    // A second writer holding the old revision loses.
    let err = s
        .commit(&[put(&key, "3", Expect::ModRevision(r1))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { actual: Some(a), .. } if a == r2));
    let kv = s.get(&key).await.unwrap().unwrap();
    assert_eq!(kv.value, b"2");
    assert_eq!(kv.create_revision, r1);
    assert_eq!(kv.mod_revision, r2);
}

pub async fn commit_is_all_or_nothing(s: &Arc<dyn Store>, p: &str) {
    let a = format!("{p}/a");
    let b = format!("{p}/b");
    s.commit(&[put(&b, "old", Expect::Absent)]).await.unwrap();
    // `b` exists, so the whole commit fails and `a` is not written either.
    let err = s
        .commit(&[put(&a, "1", Expect::Absent), put(&b, "new", Expect::Absent)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref key, .. } if *key == b));
    assert_eq!(s.get(&a).await.unwrap(), None);
    assert_eq!(s.get(&b).await.unwrap().unwrap().value, b"old");
}

pub async fn delete_with_guard(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}/a");
    let r = s.commit(&[put(&key, "1", Expect::Absent)]).await.unwrap();
    let err = s
        .commit(&[Write::delete(&key, Expect::ModRevision(r + 100))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    s.commit(&[Write::delete(&key, Expect::ModRevision(r))])
        .await
        .unwrap();
    assert_eq!(s.get(&key).await.unwrap(), None);
    // Deleted keys count as absent again.
    s.commit(&[put(&key, "again", Expect::Absent)])
        .await
        .unwrap();
}

/// The keys under `prefix`, in order.
async fn keys(s: &Arc<dyn Store>, prefix: &str) -> Vec<String> {
    let snap = s.list(prefix).await.unwrap();
    snap.items.into_iter().map(|kv| kv.key).collect()
}

pub async fn delete_prefix_removes_exactly_the_keys_under_it(s: &Arc<dyn Store>, p: &str) {
    let writes: Vec<Write> = ["a/b/1", "a/b/2", "a/b/c/3", "a/b", "a/bc", "a/b0", "a/c"]
        .iter()
        .map(|k| put(&format!("{p}/{k}"), k, Expect::Absent))
        .collect();
    s.commit(&writes).await.unwrap();
    s.commit(&[Write::delete_prefix(format!("{p}/a/b/"))])
        .await
        .unwrap();
    // The key named like the prefix without its slash, and siblings that
    // share its first bytes, stay.
    let left = ["a/b", "a/b0", "a/bc", "a/c"].map(|k| format!("{p}/{k}"));
    assert_eq!(keys(s, &format!("{p}/")).await, left);
    // A prefix that holds nothing: done, nothing changes.
    s.commit(&[Write::delete_prefix(format!("{p}/a/b/"))])
        .await
        .unwrap();
    assert_eq!(keys(s, &format!("{p}/")).await, left);
}

pub async fn delete_prefix_commits_with_guarded_puts(s: &Arc<dyn Store>, p: &str) {
    let guard = format!("{p}/guard");
    let r = s.commit(&[put(&guard, "1", Expect::Absent)]).await.unwrap();
    let old: Vec<Write> = (0..3)
        .map(|i| put(&format!("{p}/old/{i}"), "v", Expect::Absent))
        .collect();
    s.commit(&old).await.unwrap();
    let next = s
        .commit(&[
            put(&guard, "2", Expect::ModRevision(r)),
            Write::delete_prefix(format!("{p}/old/")),
            put(&format!("{p}/new"), "v", Expect::Absent),
            // A single delete of a key under the prefix overlaps it, which
            // etcd allows.
            Write::delete(format!("{p}/old/0"), Expect::Any),
        ])
        .await
        .unwrap();
    // One commit, one revision.
    assert_eq!(s.get(&guard).await.unwrap().unwrap().mod_revision, next);
    assert_eq!(
        s.get(&format!("{p}/new"))
            .await
            .unwrap()
            .unwrap()
            .mod_revision,
        next
    );
    assert!(keys(s, &format!("{p}/old/")).await.is_empty());
}

pub async fn a_failed_guard_leaves_the_prefix_untouched(s: &Arc<dyn Store>, p: &str) {
    let guard = format!("{p}/guard");
    let r = s.commit(&[put(&guard, "1", Expect::Absent)]).await.unwrap();
    let old: Vec<Write> = (0..3)
        .map(|i| put(&format!("{p}/old/{i}"), "v", Expect::Absent))
        .collect();
    s.commit(&old).await.unwrap();
    let before = s.list(&format!("{p}/old/")).await.unwrap().items;
    let err = s
        .commit(&[
            Write::delete_prefix(format!("{p}/old/")),
            put(&guard, "2", Expect::ModRevision(r + 100)),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key, .. } if *key == guard),
        "{err:?}"
    );
    assert_eq!(s.list(&format!("{p}/old/")).await.unwrap().items, before);
    assert_eq!(before.len(), 3);
}

pub async fn a_put_under_a_deleted_prefix_is_refused(s: &Arc<dyn Store>, p: &str) {
    // etcd refuses a commit that deletes a range and puts a key inside it:
    // which should win is not said.
    let inside = format!("{p}/old/new");
    let err = s
        .commit(&[
            Write::delete_prefix(format!("{p}/old/")),
            put(&inside, "v", Expect::Absent),
        ])
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::DuplicateKey(inside));
    // Beside it (not under it) is fine.
    s.commit(&[
        Write::delete_prefix(format!("{p}/old/")),
        put(&format!("{p}/old"), "v", Expect::Absent),
    ])
    .await
    .unwrap();
}

pub async fn a_key_deleted_or_put_again_leaves_its_lease(s: &Arc<dyn Store>, p: &str) {
    // A leased key deleted and put again without the lease, and one put
    // again without it, no longer vanish with the lease.
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let (a, b) = (format!("{p}/leased/a"), format!("{p}/b"));
    s.commit(&[
        Write::put_with_lease(&a, b"x".to_vec(), lease, Expect::Absent),
        Write::put_with_lease(&b, b"x".to_vec(), lease, Expect::Absent),
    ])
    .await
    .unwrap();
    s.commit(&[Write::delete_prefix(format!("{p}/leased/"))])
        .await
        .unwrap();
    s.commit(&[
        put(&a, "free", Expect::Absent),
        put(&b, "free", Expect::Any),
    ])
    .await
    .unwrap();
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get(&a).await.unwrap().unwrap().value, b"free");
    assert_eq!(s.get(&b).await.unwrap().unwrap().value, b"free");
}

pub async fn list_is_ordered_and_bounded_by_prefix(s: &Arc<dyn Store>, p: &str) {
    let writes: Vec<Write> = ["b", "a", "c/x"]
        .iter()
        .map(|k| put(&format!("{p}/in/{k}"), k, Expect::Any))
        .chain([
            put(&format!("{p}/im"), "outside", Expect::Any),
            put(&format!("{p}/in0"), "outside", Expect::Any),
        ])
        .collect();
    let rev = s.commit(&writes).await.unwrap();
    let snap = s.list(&format!("{p}/in/")).await.unwrap();
    let keys: Vec<&str> = snap.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{p}/in/a"),
            format!("{p}/in/b"),
            format!("{p}/in/c/x")
        ]
    );
    assert!(snap.revision >= rev);
}

pub async fn list_pages_through_many_keys(s: &Arc<dyn Store>, p: &str) {
    // More keys than one etcd page (10,000) in 128-write commits.
    let n = 10_300;
    let keys: Vec<String> = (0..n).map(|i| format!("{p}/many/{i:06}")).collect();
    for chunk in keys.chunks(MAX_OPS_PER_COMMIT) {
        let writes: Vec<Write> = chunk.iter().map(|k| put(k, "v", Expect::Absent)).collect();
        s.commit(&writes).await.unwrap();
    }
    let snap = s.list(&format!("{p}/many/")).await.unwrap();
    assert_eq!(snap.items.len(), n);
    assert!(snap.items.windows(2).all(|w| w[0].key < w[1].key));
}

pub async fn limits_are_enforced(s: &Arc<dyn Store>, p: &str) {
    let too_many: Vec<Write> = (0..=crate::ETCD_MAX_TXN_OPS)
        .map(|i| put(&format!("{p}/{i}"), "v", Expect::Any))
        .collect();
    assert!(matches!(
        s.commit(&too_many).await,
        Err(StoreError::TooLarge { what: "writes", .. })
    ));
    let twice = [
        put(&format!("{p}/k"), "1", Expect::Any),
        put(&format!("{p}/k"), "2", Expect::Any),
    ];
    assert!(matches!(
        s.commit(&twice).await,
        Err(StoreError::DuplicateKey(_))
    ));
    assert!(s.list(&format!("{p}/")).await.unwrap().items.is_empty());
}

pub async fn concurrent_creators_one_wins(s: &Arc<dyn Store>, p: &str) {
    // Sixteen writers race to create the same key: exactly one succeeds.
    let key = format!("{p}/leader");
    let attempts = (0..16).map(|i| {
        let key = key.clone();
        async move { s.commit(&[put(&key, &i.to_string(), Expect::Absent)]).await }
    });
    let results = join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
}

pub async fn check_writes_guard_without_writing(s: &Arc<dyn Store>, p: &str) {
    let fence = format!("{p}/fence");
    let other = format!("{p}/other");
    let r = s.commit(&[put(&fence, "f", Expect::Absent)]).await.unwrap();
    let err = s
        .commit(&[
            Write::check(&fence, Expect::ModRevision(r + 1)),
            put(&other, "1", Expect::Any),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref key, .. } if *key == fence));
    assert_eq!(s.get(&other).await.unwrap(), None);
    s.commit(&[
        Write::check(&fence, Expect::ModRevision(r)),
        put(&other, "1", Expect::Any),
    ])
    .await
    .unwrap();
    assert_eq!(s.get(&fence).await.unwrap().unwrap().mod_revision, r);
    assert!(s.get(&other).await.unwrap().is_some());
}

pub async fn revoking_a_lease_removes_its_keys(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}/leased");
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    s.commit(&[Write::put_with_lease(
        &key,
        b"x".to_vec(),
        lease,
        Expect::Absent,
    )])
    .await
    .unwrap();
    s.keep_alive(lease).await.unwrap();
    assert!(s.get(&key).await.unwrap().is_some());
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap(), None);
    let r = s.keep_alive(lease).await;
    assert!(matches!(r, Err(StoreError::LeaseExpired(_))), "{r:?}");
}

pub async fn an_expired_lease_removes_its_keys(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}/leased");
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    s.commit(&[Write::put_with_lease(
        &key,
        b"x".to_vec(),
        lease,
        Expect::Absent,
    )])
    .await
    .unwrap();
    let start = std::time::Instant::now();
    while s.get(&key).await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the key outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn a_fenced_commit_fails_once_the_fence_moves(s: &Arc<dyn Store>, p: &str) {
    let fence = format!("{p}/leader");
    let key = format!("{p}/data");
    let r = s
        .commit(&[put(&fence, "me", Expect::Absent)])
        .await
        .unwrap();
    let lost = tokio_util::sync::CancellationToken::new();
    let fenced = crate::Fenced::new(s.clone(), fence.clone(), r, lost.clone());
    fenced
        .commit(&[put(&key, "1", Expect::Absent)])
        .await
        .unwrap();
    // Another leader takes over: the key is re-created.
    s.commit(&[Write::delete(&fence, Expect::Any)])
        .await
        .unwrap();
    s.commit(&[put(&fence, "them", Expect::Absent)])
        .await
        .unwrap();
    let err = fenced
        .commit(&[put(&key, "2", Expect::Any)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");
    assert!(lost.is_cancelled());
    assert_eq!(s.get(&key).await.unwrap().unwrap().value, b"1");
}

pub async fn watch_key_returns_once_the_key_changes(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}/leader");
    let within = Duration::from_secs(10);
    let r1 = s.commit(&[put(&key, "a", Expect::Absent)]).await.unwrap();
    // Seen at an older revision: changed already.
    tokio::time::timeout(within, s.watch_key(&key, r1 - 1))
        .await
        .expect("a stale revision returns at once")
        .unwrap();
    let watch = s.watch_key(&key, r1);
    tokio::pin!(watch);
    // Another key's change is not this key's.
    s.commit(&[put(&format!("{p}/other"), "x", Expect::Absent)])
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut watch)
            .await
            .is_err(),
        "returned while the key was unchanged"
    );
    // Put again.
    let r2 = s
        .commit(&[put(&key, "b", Expect::ModRevision(r1))])
        .await
        .unwrap();
    tokio::time::timeout(within, watch)
        .await
        .expect("a put is a change")
        .unwrap();
    // Deleted.
    let watch = s.watch_key(&key, r2);
    tokio::pin!(watch);
    assert!(tokio::time::timeout(Duration::from_millis(100), &mut watch)
        .await
        .is_err());
    s.commit(&[Write::delete(&key, Expect::Any)]).await.unwrap();
    tokio::time::timeout(within, watch)
        .await
        .expect("a delete is a change")
        .unwrap();
    // Gone with its lease.
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    let r3 = s
        .commit(&[Write::put_with_lease(
            &key,
            b"c".to_vec(),
            lease,
            Expect::Absent,
        )])
        .await
        .unwrap();
    tokio::time::timeout(within, s.watch_key(&key, r3))
        .await
        .expect("an expired lease is a change")
        .unwrap();
    assert_eq!(s.get(&key).await.unwrap(), None);
}

/// Awaits every future concurrently, in one task (without pulling in `futures`).
async fn join_all<F: Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut slots: Vec<Option<Pin<Box<F>>>> = fs.map(|f| Some(Box::pin(f))).collect();
    let mut out = Vec::with_capacity(slots.len());
    std::future::poll_fn(|cx| {
        for slot in slots.iter_mut() {
            if let Some(f) = slot {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    out.push(v);
                    *slot = None;
                }
            }
        }
        if slots.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out
}

/// Instantiates the suite for a backend: `$make` is an async expression
/// that yields a fresh `impl Store`; each test gets its own key prefix.
/// Attributes after it go on every test, so that a backend that needs a
/// server can be opt-in:
///
/// ```text
/// store_conformance_suite!(etcd_store().await, #[ignore = "needs etcd"]);
/// ```
#[macro_export]
macro_rules! store_conformance_suite {
    // One test per name, each carrying the caller's attributes (a list
    // matched once cannot be repeated inside the list of names, hence the
    // recursion).
    (@tests [$($attr:tt)*] $make:expr; $name:ident, $($rest:ident,)*) => {
        #[tokio::test]
        $($attr)*
        async fn $name() {
            let store: std::sync::Arc<dyn $crate::Store> = std::sync::Arc::new($make);
            $crate::conformance::$name(&store, concat!("/conformance/", stringify!($name))).await;
        }
        $crate::store_conformance_suite!(@tests [$($attr)*] $make; $($rest,)*);
    };
    (@tests [$($attr:tt)*] $make:expr;) => {};
    ($make:expr $(, #[$attr:meta])*) => {
        $crate::store_conformance_suite!(@tests [$(#[$attr])*] $make;
            get_missing_is_none,
            put_then_get,
            absent_guard_refuses_existing_key,
            revision_guard_is_compare_and_swap,
            commit_is_all_or_nothing,
            delete_with_guard,
            delete_prefix_removes_exactly_the_keys_under_it,
            delete_prefix_commits_with_guarded_puts,
            a_failed_guard_leaves_the_prefix_untouched,
            a_put_under_a_deleted_prefix_is_refused,
            a_key_deleted_or_put_again_leaves_its_lease,
            list_is_ordered_and_bounded_by_prefix,
            list_pages_through_many_keys,
            limits_are_enforced,
            concurrent_creators_one_wins,
            check_writes_guard_without_writing,
            revoking_a_lease_removes_its_keys,
            an_expired_lease_removes_its_keys,
            a_fenced_commit_fails_once_the_fence_moves,
            watch_key_returns_once_the_key_changes,
        );
    };
}
