//! Sequential call latency on one reused connection, against a real,
//! local etcd.
//!
//! `cargo bench -p global-scheduler --bench latency [-- CALLS]`
//!
//! A client that makes one call at a time (a script, `schedctl` in a loop,
//! a generated client) waits the whole round trip of every call, so any
//! stall per response multiplies. This starts etcd and the global
//! scheduler (in this process, plaintext gRPC on loopback), opens ONE
//! connection, and times, call by call:
//! 1. CALLS single-job Submit calls (a job of 100 tasks each, as `schedctl
//!    run` makes them): each waits for its etcd commit;
//! 2. CALLS GetJob calls on one of those jobs (the answer, with its 100
//!    tasks, is well over the ~250 bytes past which a server without
//!    TCP_NODELAY waits for the client's delayed ACK: ~44 ms a call);
//! 3. CALLS ListClusters calls (no cluster: a small answer, for contrast).
//!
//! It prints the median, p99 and max of each in milliseconds. Target
//! (issue 14): GetJob median under 2 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use global_scheduler::Config;
use prost::Message;
use sched_proto::pb;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_store::testing::EtcdServer;
use sched_store::{EtcdStore, Store};
use tokio_util::sync::CancellationToken;

const TASKS_PER_JOB: u32 = 100;

/// The `q`-quantile of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(what: &str, mut samples: Vec<Duration>, bytes: usize) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {what:<34} {:>5} calls  response {bytes:>5} B  median {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        samples.len(),
        ms(quantile(&samples, 0.5)),
        ms(quantile(&samples, 0.99)),
        ms(*samples.last().expect("at least one call")),
    );
}

fn job(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        name: format!("lat-{i}"),
        tasks: TASKS_PER_JOB,
        resources: Some(pb::ResourceRequest {
            cpu: "500m".to_string(),
            memory: "512Mi".to_string(),
            disk: None,
            gpu: None,
        }),
        command: vec!["sleep".to_string(), "1".to_string()],
        ..Default::default()
    }
}

fn main() {
    let calls: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let etcd = EtcdServer::start().expect("start etcd (is etcd-server installed?)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let store: Arc<dyn Store> =
            Arc::new(EtcdStore::connect(&[etcd.url()]).await.expect("etcd"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(global_scheduler::run(
            listener,
            store,
            Config::new(Default::default()),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sched_proto::process::serving_tls(
            &url,
            "clustersched.v1.SchedulerService",
            Duration::from_secs(1),
            None,
        )
        .await
        .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "the scheduler did not lead within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One connection, open before the clock starts, reused by every call.
        let channel = sched_security::tls::endpoint(&url, None)
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let mut c = SchedulerServiceClient::new(channel);
        println!(
            "sequential calls on one reused connection, scheduler at {url}, etcd at {}",
            etcd.url()
        );

        let mut samples = Vec::with_capacity(calls);
        let mut bytes = 0;
        for i in 0..calls {
            let req = pb::SubmitRequest {
                yaml: String::new(),
                jobs: vec![job(i)],
                submission_id: format!("{i:016x}"),
            };
            let start = Instant::now();
            let r = c.submit(req).await.expect("submit");
            samples.push(start.elapsed());
            bytes = r.into_inner().encoded_len();
        }
        report("Submit, 1 job of 100 tasks", samples, bytes);

        let get = || pb::GetJobRequest {
            name: "lat-0".to_string(),
            ..Default::default()
        };
        let bytes = c
            .get_job(get())
            .await
            .expect("get_job")
            .into_inner()
            .encoded_len();
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            c.get_job(get()).await.expect("get_job");
            samples.push(start.elapsed());
        }
        report("GetJob, 100 tasks", samples, bytes);

        let bytes = c
            .list_clusters(pb::ListClustersRequest {})
            .await
            .expect("list_clusters")
            .into_inner()
            .encoded_len();
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            c.list_clusters(pb::ListClustersRequest {})
                .await
                .expect("list_clusters");
            samples.push(start.elapsed());
        }
        report("ListClusters (none registered)", samples, bytes);

        shutdown.cancel();
        server.await.unwrap().unwrap();
    });
}
