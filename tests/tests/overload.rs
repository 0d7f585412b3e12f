//! Backpressure and shutdown: overload is refused at the edge with a retry
//! hint and memory stays bounded; every binary stops cleanly on SIGTERM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sched_proto::pb;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_tests::{
    channel, eventually, memory, start_etcd, ClusterSpec, LocalAgent, NodeAgent, Scheduler,
    TestCluster,
};

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn job(name: String, tasks: u32) -> pb::SubmitRequest {
    pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![pb::JobSpec {
            name: name.clone(),
            tasks,
            resources: Some(pb::ResourceRequest {
                cpu: "10m".into(),
                memory: "16Mi".into(),
                disk: None,
                gpu: None,
            }),
            priority: None,
            locality: None,
            constraints: Default::default(),
            command: vec!["sh".into(), "-c".into(), "sleep 1".into()],
            ..Default::default()
        }],
        submission_id: name,
    }
}

/// Submissions far beyond what can be placed: refused with
/// RESOURCE_EXHAUSTED and a retry hint, memory bounded, and everything
/// accepted is scheduled once a cluster drains the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn overload_is_refused_at_the_edge_and_everything_accepted_runs() {
    let etcd = start_etcd();
    let sched = Scheduler::start(
        &etcd.url(),
        &[
            "--topology",
            TOPOLOGY,
            "--max-pending-tasks",
            "2000",
            "--queue",
            "16",
        ],
    )
    .await;
    const CALLERS: usize = 16;
    const JOBS_EACH: usize = 5;
    const TASKS: u32 = 100;
    let refused = Arc::new(AtomicU64::new(0));
    let hinted = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|k| {
            let mut c = SchedulerServiceClient::new(channel(&sched.url()));
            let (refused, hinted) = (refused.clone(), hinted.clone());
            tokio::spawn(async move {
                for j in 0..JOBS_EACH {
                    let req = job(format!("load-{k}-{j}"), TASKS);
                    loop {
                        match c.submit(req.clone()).await {
                            Ok(_) => break,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                if tonic_types::StatusExt::get_details_retry_info(&s)
                                    .and_then(|r| r.retry_delay)
                                    .is_some()
                                {
                                    hinted.fetch_add(1, Ordering::Relaxed);
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(s) => panic!("unexpected {s:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    // No cluster yet: the backlog fills to the limit and stays there.
    eventually("refusals", Duration::from_secs(20), || async {
        (refused.load(Ordering::Relaxed) >= 10).then_some(())
    })
    .await;
    let jobs = sched.jobs().await.unwrap();
    let waiting: u32 = jobs
        .iter()
        .filter_map(|j| j.counts)
        .map(|c| c.pending)
        .sum();
    assert!(waiting <= 2000, "{waiting} tasks pending, over the limit");
    assert_eq!(
        refused.load(Ordering::Relaxed),
        hinted.load(Ordering::Relaxed),
        "every refusal carries a retry hint"
    );

    // A cluster drains the backlog; everything gets in and is placed.
    let cluster = TestCluster::start(&sched.url(), ClusterSpec::new("east-a", "us-east"));
    for c in callers {
        c.await.unwrap();
    }
    let total = CALLERS * JOBS_EACH * TASKS as usize;
    eventually(
        "every accepted task placed",
        Duration::from_secs(60),
        || async { (cluster.log().placed.len() == total).then_some(()) },
    )
    .await;
    let (peak, _) = memory(sched.pid().unwrap()).unwrap();
    println!(
        "overload: {} refusals, peak RSS of the scheduler {:.1} MiB",
        refused.load(Ordering::Relaxed),
        peak as f64 / (1 << 20) as f64
    );
    assert!(peak < 256 << 20, "peak RSS {peak} bytes");
    cluster.stop().await;
}

/// SIGTERM stops every binary within a deadline; a node agent's tasks are
/// reported lost on the way out and run again elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn every_binary_stops_cleanly_on_sigterm() {
    let etcd = start_etcd();
    let mut sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let mut agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = NodeAgent::start(&agent.url(), "n1", "1", "1Gi", dir.path().join("n1"));
    sched.wait_machines_up(1, Duration::from_secs(20)).await;
    sched
        .client()
        .await
        .submit(job("moves".into(), 1))
        .await
        .unwrap();
    eventually("running on n1", Duration::from_secs(20), || async {
        let st = sched.job("moves").await?;
        (st.summary?.counts?.running == 1).then_some(())
    })
    .await;
    let _n2 = NodeAgent::start(&agent.url(), "n2", "1", "1Gi", dir.path().join("n2"));
    assert!(
        n1.terminate(Duration::from_secs(10)),
        "the node agent stops within 10 s"
    );
    let st = eventually("moved to n2 and done", Duration::from_secs(30), || async {
        let st = sched.job("moves").await?;
        (st.summary.as_ref()?.state == pb::JobState::Succeeded as i32).then_some(st)
    })
    .await;
    assert_eq!(st.tasks[0].machine, "n2");
    assert!(
        agent.terminate(Duration::from_secs(10)),
        "the local agent stops within 10 s"
    );
    assert!(
        sched.terminate(Duration::from_secs(10)),
        "the scheduler stops within 10 s"
    );
}
