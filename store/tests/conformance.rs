//! The store conformance suite against the in-memory store and a real etcd.
//! The etcd run is opt-in: its tests are ignored unless run with
//! `cargo test -- --include-ignored`, and then fail if etcd is missing.

mod mem {
    sched_store::store_conformance_suite!(sched_store::MemStore::new());
}

mod etcd {
    use std::sync::OnceLock;

    use sched_store::testing::{start_etcd, EtcdServer};
    use sched_store::EtcdStore;

    /// One etcd for the whole suite (each test writes under its own prefix).
    fn server() -> &'static EtcdServer {
        static SERVER: OnceLock<EtcdServer> = OnceLock::new();
        SERVER.get_or_init(start_etcd)
    }

    async fn store() -> EtcdStore {
        EtcdStore::connect(&[server().url()])
            .await
            .expect("connect to etcd")
    }

    sched_store::store_conformance_suite!(store().await, #[ignore = "needs etcd"]);
}
