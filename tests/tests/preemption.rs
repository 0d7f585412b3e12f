//! Preemption live (issue 13), with real etcd, the real binaries and real
//! processes: a cluster full of batch tasks; a production job needing half
//! of it starts within seconds, evicting exactly as many batch tasks as it
//! needs; a second production job evicts the rest of the batch work but
//! never the first; a third, finding only production, waits and says why;
//! once production leaves, the evicted batch tasks run again.

use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, schedctl_command, start_etcd, LocalAgent, NodeAgent, Scheduler};

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn job(name: &str, band: &str, tasks: u32) -> pb::SubmitRequest {
    pb::SubmitRequest {
        submission_id: name.to_string(),
        jobs: vec![pb::JobSpec {
            name: name.to_string(),
            tasks,
            resources: Some(pb::ResourceRequest {
                cpu: "1".into(),
                memory: "32Mi".into(),
                disk: None,
                gpu: None,
            }),
            command: vec!["sleep".into(), "600".into()],
            band: Some(band.into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn count(st: &pb::JobStatus, state: pb::TaskState) -> usize {
    st.tasks.iter().filter(|t| t.state == state as i32).count()
}

async fn running(sched: &Scheduler, name: &str) -> usize {
    match sched.job(name).await {
        Some(st) => count(&st, pb::TaskState::Running),
        None => 0,
    }
}

fn schedctl(sched: &Scheduler, args: &[&str]) -> String {
    let out = schedctl_command()
        .args(["--server", &sched.url()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schedctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn production_evicts_only_what_it_needs_and_batch_runs_again() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let _nodes: Vec<NodeAgent> = (1..=4)
        .map(|i| {
            let name = format!("m{i}");
            NodeAgent::start(&agent.url(), &name, "4", "4Gi", dir.path().join(&name))
        })
        .collect();
    sched.wait_machines_up(4, Duration::from_secs(30)).await;
    let mut c = sched.client().await;

    // 16 batch tasks of one cpu fill the 16 cpus.
    c.submit(job("batch", "batch", 16)).await.unwrap();
    eventually("the batch job running", Duration::from_secs(60), || async {
        (running(&sched, "batch").await == 16).then_some(())
    })
    .await;

    // Production needing half the cluster: it runs within seconds, and
    // exactly 8 batch tasks made room.
    c.submit(job("prod1", "production", 8)).await.unwrap();
    eventually("prod1 running", Duration::from_secs(20), || async {
        (running(&sched, "prod1").await == 8).then_some(())
    })
    .await;
    assert_eq!(running(&sched, "batch").await, 8);
    let described = schedctl(&sched, &["describe", "job", "batch"]);
    assert!(
        described.contains("preempted by prod1/"),
        "describe names the preemptor:\n{described}"
    );

    // A second production job takes the rest of the batch work's room,
    // never prod1's.
    c.submit(job("prod2", "production", 8)).await.unwrap();
    eventually("prod2 running", Duration::from_secs(20), || async {
        (running(&sched, "prod2").await == 8).then_some(())
    })
    .await;
    let st = sched.job("prod1").await.unwrap();
    assert_eq!(count(&st, pb::TaskState::Running), 8);
    assert!(
        st.tasks.iter().all(|t| t.attempts == 1),
        "prod1 was never evicted: {:?}",
        st.tasks
    );
    assert_eq!(running(&sched, "batch").await, 0);

    // A third finds only production: it waits, and describe says that
    // preemption cannot help.
    c.submit(job("prod3", "production", 1)).await.unwrap();
    let why = eventually("prod3's reason", Duration::from_secs(20), || async {
        let out = schedctl(&sched, &["describe", "job", "prod3"]);
        out.contains("preemption: cannot help").then_some(out)
    })
    .await;
    assert_eq!(running(&sched, "prod3").await, 0, "{why}");
    assert_eq!(running(&sched, "prod1").await, 8);
    assert_eq!(running(&sched, "prod2").await, 8);

    // The evicted batch tasks show as preempted until they are placed
    // again, and run again once production is gone.
    let json = schedctl(&sched, &["get", "job", "batch", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let states: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert!(
        states.iter().all(|s| *s != "running"),
        "no batch task runs: {states:?}"
    );
    for name in ["prod1", "prod2", "prod3"] {
        schedctl(&sched, &["cancel", name]);
    }
    eventually(
        "the batch job running again",
        Duration::from_secs(90),
        || async { (running(&sched, "batch").await == 16).then_some(()) },
    )
    .await;
}
