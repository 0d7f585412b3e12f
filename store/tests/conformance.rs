//! The store conformance suite against the in-memory store and a real etcd.

mod mem {
    sched_store::store_conformance_suite!(sched_store::MemStore::new());
}

mod etcd {
    use std::sync::OnceLock;

    use sched_store::testing::{etcd_available, EtcdServer};
    use sched_store::EtcdStore;

    /// One etcd for the whole suite (each test writes under its own prefix).
    fn server() -> Option<&'static EtcdServer> {
        static SERVER: OnceLock<Option<EtcdServer>> = OnceLock::new();
        SERVER
            .get_or_init(|| {
                if !etcd_available() {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "etcd is not installed; CI must install etcd-server"
                    );
                    eprintln!("etcd not installed: skipping the etcd conformance run");
                    return None;
                }
                Some(EtcdServer::start().expect("start etcd"))
            })
            .as_ref()
    }

    async fn store() -> Option<EtcdStore> {
        let s = server()?;
        Some(
            EtcdStore::connect(&[s.url()])
                .await
                .expect("connect to etcd"),
        )
    }

    macro_rules! etcd_store {
        () => {
            match store().await {
                Some(s) => s,
                None => return,
            }
        };
    }

    sched_store::store_conformance_suite!(etcd_store!());
}
