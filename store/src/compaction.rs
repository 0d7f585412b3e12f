//! Compacting the store's history, one interval behind.
//!
//! etcd keeps every revision of every key until told to forget them; its
//! database grows until it reaches its space quota and refuses writes.
//! [`run`] compacts it periodically, as the Kubernetes API server does
//! (`--etcd-compaction-interval`): at each tick it notes the store's newest
//! revision and compacts to the one it noted at the tick before. So history
//! is kept for one interval: a reader paging a large list at one revision,
//! or a watcher catching up, has that long before its revision is gone.
//!
//! Several replicas may run it at once: compacting to a revision already
//! compacted is not an error, so the one behind simply finds it done.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Revision, Store};

/// A prefix that holds no keys: listing it costs one read that returns
/// nothing but the store's revision.
const PROBE: &str = "/sched-store/compaction/probe/";

/// Every `every`, compacts the store's history to the revision it read at
/// the previous tick, until `shutdown` is cancelled. Errors are logged and
/// the next tick tries again. An `every` of zero turns compaction off.
pub async fn run(store: Arc<dyn Store>, every: Duration, shutdown: CancellationToken) {
    if every.is_zero() {
        // `tokio::time::interval` panics on a zero period.
        warn!("compaction interval is zero: the store's history is not compacted");
        return;
    }
    let mut ticks = tokio::time::interval(every);
    // After a long stall (a suspended process), one tick, not a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut compactor = Compactor::default();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // A compaction cut short by shutdown is harmless: etcd applies it
        // whole or not at all, and the next run starts over.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = compactor.tick(store.as_ref()) => {}
        }
    }
}

/// What [`run`] remembers between ticks.
#[derive(Debug, Default)]
struct Compactor {
    /// The revision read at the previous tick: the next compaction's target.
    previous: Option<Revision>,
    /// The revision last compacted to (0: none yet).
    compacted: Revision,
}

impl Compactor {
    async fn tick(&mut self, store: &dyn Store) {
        let newest = match store.list(PROBE).await {
            Ok(snapshot) => snapshot.revision,
            Err(e) => {
                // The target stays the revision read before, which is older
                // still: no less history is kept.
                warn!(cause = %e, "compaction: cannot read the store's revision");
                return;
            }
        };
        let Some(target) = self.previous.replace(newest) else {
            return;
        };
        // Nothing was written for a whole interval: nothing new to discard.
        if target <= self.compacted {
            return;
        }
        match store.compact(target).await {
            Ok(()) => {
                self.compacted = target;
                info!(revision = target, newest, "compacted the store's history");
            }
            Err(e) => {
                warn!(cause = %e, revision = target, "compaction failed; trying again next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::{Expect, KeyValue, LeaseId, MemStore, Snapshot, StoreError, Write};

    const EVERY: Duration = Duration::from_secs(60);

    /// A [`MemStore`] that records the compactions asked of it, and fails
    /// the first `failures` of them.
    #[derive(Default)]
    struct Recording {
        store: MemStore,
        compacted: Mutex<Vec<Revision>>,
        failures: Mutex<usize>,
    }

    impl Recording {
        fn compacted(&self) -> Vec<Revision> {
            self.compacted.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Store for Recording {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.store.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Snapshot, StoreError> {
            self.store.list(prefix).await
        }
        async fn commit(&self, writes: &[Write]) -> Result<Revision, StoreError> {
            self.store.commit(writes).await
        }
        async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
            self.store.grant_lease(ttl).await
        }
        async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
            self.store.keep_alive(lease).await
        }
        async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
            self.store.revoke_lease(lease).await
        }
        async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(StoreError::Unavailable("etcd is down".to_string()));
            }
            self.compacted.lock().unwrap().push(revision);
            Ok(())
        }
    }

    async fn write(store: &Recording, n: u32) -> Revision {
        store
            .commit(&[Write::put(format!("k/{n}"), "v", Expect::Any)])
            .await
            .unwrap()
    }

    /// Sleeps until `half_intervals` half intervals after `start` (odd ones
    /// fall between two ticks); with the clock paused, at once.
    async fn until(start: tokio::time::Instant, half_intervals: u32) {
        tokio::time::sleep_until(start + EVERY * half_intervals / 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn compacts_to_the_revision_read_one_interval_before() {
        let store = Arc::new(Recording::default());
        let r1 = write(&store, 1).await;
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(run(store.clone(), EVERY, shutdown.clone()));
        // Tick 0 (t = 0) reads r1 and compacts nothing: there is no tick
        // before it.
        until(start, 1).await;
        assert!(store.compacted().is_empty());
        let r2 = write(&store, 2).await;
        // Tick 1 reads r2 and compacts to r1.
        until(start, 3).await;
        assert_eq!(store.compacted(), [r1]);
        let r3 = write(&store, 3).await;
        // Tick 2 compacts to r2; tick 3 to r3; tick 4 finds nothing written
        // since r3 was compacted and compacts nothing.
        until(start, 9).await;
        assert_eq!(store.compacted(), [r1, r2, r3]);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_compaction_is_tried_again_at_the_next_tick() {
        let store = Arc::new(Recording::default());
        *store.failures.lock().unwrap() = 1;
        let r1 = write(&store, 1).await;
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(run(store.clone(), EVERY, shutdown.clone()));
        until(start, 1).await;
        let r2 = write(&store, 2).await;
        // Tick 1's compaction to r1 fails; tick 2 compacts to r2, which it
        // read at tick 1.
        until(start, 3).await;
        assert!(store.compacted().is_empty());
        until(start, 5).await;
        assert_eq!(store.compacted(), [r2]);
        assert!(r2 > r1);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_it_between_ticks() {
        let store = Arc::new(Recording::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(store.clone(), EVERY, shutdown.clone()));
        tokio::time::sleep(EVERY / 2).await;
        shutdown.cancel();
        // It returns without waiting for the next tick.
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("run returns on shutdown")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_turns_it_off() {
        let store = Arc::new(Recording::default());
        run(store.clone(), Duration::ZERO, CancellationToken::new()).await;
        assert!(store.compacted().is_empty());
    }

    #[tokio::test]
    async fn the_memory_store_compacts_without_losing_anything() {
        let store = MemStore::new();
        let r = store
            .commit(&[Write::put("k", "v", Expect::Absent)])
            .await
            .unwrap();
        store.compact(r).await.unwrap();
        // Again, and older: done already.
        store.compact(r).await.unwrap();
        store.compact(r - 1).await.unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v");
    }

    #[cfg(feature = "testing")]
    mod etcd {
        use super::*;
        use crate::testing::start_etcd;
        use crate::EtcdStore;

        /// etcd's refusal of a read below its compacted revision.
        fn is_compacted(r: &Result<Option<KeyValue>, StoreError>) -> bool {
            matches!(r, Err(StoreError::Backend(m)) if m.contains("compacted"))
        }

        #[tokio::test]
        #[ignore = "needs etcd"]
        async fn compacting_etcd_discards_the_history_before_the_revision() {
            let etcd = start_etcd();
            let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
            let put = |v: &'static str| [Write::put("k", v, Expect::Any)];
            let r1 = store.commit(&put("1")).await.unwrap();
            let r2 = store.commit(&put("2")).await.unwrap();
            let r3 = store.commit(&put("3")).await.unwrap();
            assert_eq!(store.get_at("k", r1).await.unwrap().unwrap().value, b"1");

            store.compact(r2).await.unwrap();
            let r = store.get_at("k", r1).await;
            assert!(is_compacted(&r), "{r:?}");
            // The value at the compacted revision itself, and the newest,
            // are kept.
            assert_eq!(store.get_at("k", r2).await.unwrap().unwrap().value, b"2");
            assert_eq!(store.get("k").await.unwrap().unwrap().mod_revision, r3);
            // Compacted already (etcd refuses it; we do not): done.
            store.compact(r2).await.unwrap();
            store.compact(r1).await.unwrap();
            // A revision etcd has not reached is an error.
            let r = store.compact(r3 + 100).await;
            assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
        }

        #[tokio::test]
        #[ignore = "needs etcd"]
        async fn run_compacts_etcd_one_interval_behind() {
            let etcd = start_etcd();
            let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
            let put = |v: &'static str| [Write::put("k", v, Expect::Any)];
            let r1 = store.commit(&put("1")).await.unwrap();
            store.commit(&put("2")).await.unwrap();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(
                Arc::new(store.clone()),
                Duration::from_millis(100),
                shutdown.clone(),
            ));
            // The first tick reads r1 + 1; the second compacts to it, and r1
            // is gone. Real time: etcd's clock cannot be paused.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !is_compacted(&store.get_at("k", r1).await) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "revision {r1} was not compacted"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(store.get("k").await.unwrap().unwrap().value, b"2");
            shutdown.cancel();
            task.await.unwrap();
        }
    }
}
