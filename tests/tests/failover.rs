//! Several global scheduler replicas against one etcd: one leads, the
//! others stand by; when the leader dies a standby takes over, and nothing
//! acknowledged is lost or done twice.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sched_proto::pb;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_store::EtcdStore;
use sched_tests::{
    channel, eventually, leader_channel_timeouts, start_etcd, ClusterSpec, Scheduler, TestCluster,
};

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn submit(i: usize) -> pb::SubmitRequest {
    pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![pb::JobSpec {
            name: format!("job-{i:03}"),
            tasks: 5,
            resources: Some(pb::ResourceRequest {
                cpu: "100m".into(),
                memory: "64Mi".into(),
                disk: None,
                gpu: None,
            }),
            priority: None,
            locality: None,
            constraints: Default::default(),
            command: vec!["true".into()],
            ..Default::default()
        }],
        submission_id: format!("sub-{i}"),
    }
}

async fn leader(replicas: &[Scheduler]) -> Option<usize> {
    for (i, r) in replicas.iter().enumerate() {
        if r.leads().await {
            return Some(i);
        }
    }
    None
}

/// Three replicas, a stream of submissions, kill -9 the leader: a new
/// leader within 5 s, every acknowledged job present once, every task
/// placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn the_leader_dies_and_a_standby_takes_over_within_5_s() {
    let etcd = start_etcd();
    let args = ["--topology", TOPOLOGY, "--heartbeat-interval-ms", "300"];
    let mut replicas = vec![Scheduler::start(&etcd.url(), &args).await];
    for _ in 0..2 {
        replicas.push(Scheduler::start_standby(&etcd.url(), &args).await);
    }
    assert_eq!(leader(&replicas).await, Some(0));
    // A standby refuses work and names the leader.
    let err = replicas[1]
        .client()
        .await
        .submit(submit(999))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains(&replicas[0].url()),
        "{}",
        err.message()
    );

    // Clients given the standbys first follow the leader a standby names:
    // a write is turned away and the retry goes to the leader.
    let standbys_first = format!(
        "{},{},{}",
        replicas[1].url(),
        replicas[2].url(),
        replicas[0].url()
    );
    let lc = leader_channel_timeouts(
        &standbys_first,
        Duration::from_secs(2),
        Duration::from_secs(10),
    );
    let mut c = SchedulerServiceClient::new(lc.clone());
    let cancel = || pb::CancelJobRequest {
        name: "no-such-job".into(),
    };
    let err = c.cancel_job(cancel()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(lc.current(), replicas[0].url());
    let err = c.cancel_job(cancel()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let cli = sched_tests::schedctl_command()
        .args(["--server", &standbys_first, "get", "jobs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(cli.status.success(), "{stderr}");
    assert!(!stderr.contains("retrying"), "no backoff needed: {stderr}");

    let urls: Vec<String> = replicas.iter().map(Scheduler::url).collect();
    let all = urls.join(",");
    let cluster = TestCluster::start(&all, ClusterSpec::new("east-a", "us-east"));

    const JOBS: usize = 60;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let submitter = {
        let acked = acked.clone();
        let mut c = SchedulerServiceClient::new(channel(&all));
        tokio::spawn(async move {
            for i in 0..JOBS {
                loop {
                    match c.submit(submit(i)).await {
                        Ok(_) => break,
                        Err(s) => {
                            assert!(
                                !matches!(s.code(), tonic::Code::InvalidArgument),
                                "job-{i:03} refused: {s:?}"
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acked.lock().unwrap().push(format!("job-{i:03}"));
            }
        })
    };
    eventually(
        "a third of the submissions",
        Duration::from_secs(30),
        || async { (acked.lock().unwrap().len() >= JOBS / 3).then_some(()) },
    )
    .await;
    let before: Vec<String> = acked.lock().unwrap().clone();
    replicas[0].kill9();
    let killed = Instant::now();
    let (new, took) = eventually("a new leader", Duration::from_secs(10), || async {
        leader(&replicas[1..])
            .await
            .map(|i| (i + 1, killed.elapsed()))
    })
    .await;
    println!("failover took {} ms", took.as_millis());
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    submitter.await.unwrap();

    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    let keys: BTreeSet<String> = sched_tests::job_keys(&store).await.into_iter().collect();
    for name in &before {
        assert!(keys.contains(&format!("/sched/jobs/{name}")), "{name} lost");
    }
    assert_eq!(keys.len(), JOBS);
    eventually("every task placed", Duration::from_secs(60), || async {
        (cluster.log().placed.len() == JOBS * 5).then_some(())
    })
    .await;
    // The new leader agrees.
    let jobs = replicas[new].jobs().await.unwrap();
    assert_eq!(jobs.len(), JOBS);
    eventually(
        "the leader sees every task placed",
        Duration::from_secs(30),
        || async {
            let jobs = replicas[new].jobs().await?;
            jobs.iter()
                .all(|j| j.counts.is_some_and(|c| c.placed == 5))
                .then_some(())
        },
    )
    .await;
    // The standby answers reads from etcd, naming the leader: a client
    // that asked it first goes to the leader next.
    let standby = if new == 1 { 2 } else { 1 };
    let lc = leader_channel_timeouts(
        &format!("{},{}", replicas[standby].url(), replicas[new].url()),
        Duration::from_secs(2),
        Duration::from_secs(10),
    );
    let mut c = SchedulerServiceClient::new(lc.clone());
    let jobs = sched_tests::list_all_jobs!(c).unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), JOBS);
    assert_eq!(lc.current(), replicas[new].url());
    let mut direct = replicas[standby].client().await;
    let d = direct
        .describe_job(pb::DescribeJobRequest {
            name: "job-000".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // From etcd: a task's key says `assigned` until it ends (its progress
    // on a machine is the leader's, in memory).
    assert_eq!(
        d.status.unwrap().summary.unwrap().counts.unwrap().assigned,
        5
    );
    let missing = direct
        .get_job(pb::GetJobRequest {
            name: "job-999".into(),
            view: pb::JobView::Full as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    cluster.stop().await;
}

/// etcd stopped for 10 s in the middle of things: running tasks keep
/// running, new work is refused with UNAVAILABLE (and the CLI retries),
/// and once etcd is back everything acknowledged is there and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn an_etcd_outage_loses_nothing_and_work_resumes() {
    let mut etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let agent =
        sched_tests::LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let node = sched_tests::NodeAgent::start(&agent.url(), "n1", "4", "2Gi", dir.path().join("n1"));
    sched.wait_machines_up(1, Duration::from_secs(20)).await;
    let mut before = submit(0);
    before.jobs[0].name = "before".into();
    before.jobs[0].tasks = 2;
    before.jobs[0].command = vec!["sh".into(), "-c".into(), "sleep 6; echo survived".into()];
    sched.client().await.submit(before).await.unwrap();
    eventually("both running", Duration::from_secs(20), || async {
        let st = sched.job("before").await?;
        (st.summary?.counts?.running == 2).then_some(())
    })
    .await;

    etcd.kill();
    let down = Instant::now();
    // New work is refused promptly, not hung.
    let mut during = submit(1);
    during.jobs[0].name = "during".into();
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        let mut c = sched.client().await;
        loop {
            match c.submit(during.clone()).await {
                Err(s) if s.code() == tonic::Code::Unavailable => return s,
                Err(s) => panic!("refused with {s:?}"),
                Ok(_) if down.elapsed() < Duration::from_secs(1) => {
                    // Taken before the scheduler noticed; try another name.
                    during.jobs[0].name.push('x');
                }
                Ok(_) => panic!("a submission was acknowledged without etcd"),
            }
        }
    })
    .await
    .expect("refused within 20 s");
    assert_eq!(r.code(), tonic::Code::Unavailable);
    // The CLI keeps retrying through the outage.
    let cli = sched_tests::schedctl_command()
        .args([
            "--server",
            &sched.url(),
            "run",
            "after",
            "--tasks",
            "2",
            "--cpu",
            "1",
            "--memory",
            "128Mi",
            "--",
            "echo",
            "hello",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let wait = Duration::from_secs(10).saturating_sub(down.elapsed());
    tokio::time::sleep(wait).await;
    etcd.restart().unwrap();

    let out = tokio::task::spawn_blocking(move || cli.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tasks that ran through the outage finished there, once.
    let st = eventually("`before` succeeded", Duration::from_secs(60), || async {
        let st = sched.job("before").await?;
        (st.summary.as_ref()?.state == pb::JobState::Succeeded as i32).then_some(st)
    })
    .await;
    for t in &st.tasks {
        assert_eq!(node.attempts("before", t.index), [1]);
    }
    eventually("`after` succeeded", Duration::from_secs(60), || async {
        let st = sched.job("after").await?;
        (st.summary?.state == pb::JobState::Succeeded as i32).then_some(())
    })
    .await;
}
