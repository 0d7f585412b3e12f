//! The global scheduler reaches an etcd that requires TLS and client
//! certificates (`--etcd-ca`, `--etcd-cert`, `--etcd-key`), and nothing
//! reaches it without them (issue 12).

use std::process::{Command, Stdio};
use std::time::Duration;

use sched_proto::pb;
use sched_security::Kind;
use sched_store::{EtcdStore, EtcdTls, Store};
use sched_tests::pki::Pki;
use sched_tests::{eventually, free_port, Guarded, Scheduler};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn the_scheduler_keeps_its_state_in_an_etcd_that_requires_client_certificates() {
    assert!(
        sched_tests::etcd_available(),
        "etcd is not installed: {}",
        sched_tests::INSTALL_ETCD
    );
    let pki = Pki::new();
    // etcd's own certificate: any kind will do, it is valid for 127.0.0.1.
    let [ca, etcd_crt, etcd_key] = pki.issue_in("etcd", Kind::Scheduler, "etcd");
    let [_, client_crt, client_key] = pki.issue_in("client", Kind::Scheduler, "scheduler");
    let data = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(sched_store::testing::etcd_bin());
    cmd.args(["--logger=zap", "--log-level=error", "--name=default"])
        .arg(format!("--data-dir={}", data.path().join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .arg(format!("--cert-file={}", etcd_crt.display()))
        .arg(format!("--key-file={}", etcd_key.display()))
        .arg(format!("--trusted-ca-file={}", ca.display()))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _etcd = Guarded::spawn(cmd).expect("start etcd");

    let tls = EtcdTls {
        ca: std::fs::read(&ca).unwrap(),
        identity: Some((
            std::fs::read(&client_crt).unwrap(),
            std::fs::read(&client_key).unwrap(),
        )),
    };
    let store = EtcdStore::connect_tls(std::slice::from_ref(&url), Some(&tls))
        .await
        .unwrap();
    eventually(
        "etcd answering over TLS",
        Duration::from_secs(20),
        || async { store.list("/sched/").await.ok() },
    )
    .await;

    // https:// is never dialled in plaintext, and without a client
    // certificate etcd refuses.
    let e = EtcdStore::connect(std::slice::from_ref(&url))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--etcd-ca"), "{e}");
    let no_cert = EtcdTls {
        identity: None,
        ..tls.clone()
    };
    let anonymous = EtcdStore::connect_tls(std::slice::from_ref(&url), Some(&no_cert))
        .await
        .unwrap();
    assert!(anonymous.list("/sched/").await.is_err());

    // The global scheduler with the etcd flags leads and stores a job.
    let (ca_s, crt_s, key_s) = (
        ca.display().to_string(),
        client_crt.display().to_string(),
        client_key.display().to_string(),
    );
    let sched = Scheduler::start(
        &url,
        &[
            "--etcd-ca",
            &ca_s,
            "--etcd-cert",
            &crt_s,
            "--etcd-key",
            &key_s,
        ],
    )
    .await;
    sched
        .client()
        .await
        .submit(pb::SubmitRequest {
            submission_id: "s1".into(),
            jobs: vec![pb::JobSpec {
                name: "stored".into(),
                tasks: 1,
                resources: Some(pb::ResourceRequest {
                    cpu: "1".into(),
                    memory: "1Gi".into(),
                    disk: None,
                    gpu: None,
                }),
                command: vec!["true".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("submit");
    let keys = sched_tests::job_keys(&store).await;
    assert!(
        keys.iter().any(|k| k.contains("stored")),
        "the job is not in etcd: {keys:?}"
    );
}
