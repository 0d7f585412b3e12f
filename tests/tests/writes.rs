//! Issue 15: etcd writes per task on the happy path, and recovery without
//! the writes that were dropped.
//!
//! - A task's key is written when it is assigned and when it ends; its
//!   progress on a machine (placed, running) is kept in the global
//!   scheduler's memory only. Its placement key is written once, when
//!   placed, and deleted once the global scheduler has the task's success.
//!   So at most 3 puts per task (plus each job's own keys and events).
//! - A new leader reads `assigned` back and learns from the clusters'
//!   resync that the tasks run, with the attempts the old leader counted.

use std::time::Duration;

use sched_proto::pb;
use sched_store::{EtcdStore, Store};
use sched_tests::{etcd_writes, eventually, start_etcd, LocalAgent, NodeAgent, Scheduler};

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn job(name: &str, tasks: u32, command: &[&str]) -> pb::SubmitRequest {
    pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![pb::JobSpec {
            name: name.into(),
            tasks,
            resources: Some(pb::ResourceRequest {
                cpu: "100m".into(),
                memory: "64Mi".into(),
                disk: None,
                gpu: None,
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }],
        submission_id: format!("sub-{name}"),
    }
}

fn counts(s: &pb::JobStatus) -> pb::TaskCounts {
    s.summary
        .as_ref()
        .and_then(|s| s.counts)
        .unwrap_or_default()
}

/// Keys under `prefix`.
async fn keys(store: &EtcdStore, prefix: &str) -> Vec<String> {
    let snap = store.list(prefix).await.unwrap();
    snap.items.into_iter().map(|kv| kv.key).collect()
}

/// Issue 15: N tasks that run and succeed cost at most 2 puts each (their
/// placement key placed, their task key succeeded), plus a few per job (its
/// key, its spec on the cluster, one assignment record per pass, its
/// events); every placement key and every spent assignment record is
/// deleted once the successes are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn tasks_that_succeed_cost_at_most_two_puts_each() {
    const JOBS: u32 = 4;
    const TASKS: u32 = 250;
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start_with(
        &agent.url(),
        "h",
        "32",
        "128Gi",
        dir.path().join("h"),
        &["--hollow", "8", "--hollow-duration-ms", "200"],
    );
    sched.wait_machines_up(8, Duration::from_secs(30)).await;
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();

    let before = etcd_writes(&etcd.url()).await.expect("etcd's /metrics");
    let mut client = sched.client().await;
    for j in 0..JOBS {
        client
            .submit(job(&format!("ok-{j}"), TASKS, &["true"]))
            .await
            .unwrap();
    }
    for j in 0..JOBS {
        let name = format!("ok-{j}");
        eventually(
            &format!("{name} succeeded"),
            Duration::from_secs(120),
            || {
                let (sched, name) = (&sched, &name);
                async move {
                    let s = sched.job(name).await?;
                    (counts(&s).succeeded == TASKS).then_some(())
                }
            },
        )
        .await;
    }
    // Every success is in: the placements are garbage, and go (the
    // cluster keeps each job's spec while the job exists).
    eventually(
        "the placement keys deleted",
        Duration::from_secs(30),
        || {
            let store = &store;
            async move {
                let left = keys(store, "/sched/placements/east-a/").await;
                left.iter().all(|k| k.ends_with("/spec")).then_some(())
            }
        },
    )
    .await;
    // The passes' assignment records are deleted once every task they
    // name has its own key.
    eventually(
        "the assignment records deleted",
        Duration::from_secs(30),
        || {
            let store = &store;
            async move {
                let items = store.list("/sched/tasks/").await.ok()?.items;
                sched_tests::split_task_keys(items)
                    .1
                    .is_empty()
                    .then_some(())
            }
        },
    )
    .await;
    // The task keys say how each ended, with its attempt.
    let tasks = store.list("/sched/tasks/").await.unwrap().items;
    let (tasks, _) = sched_tests::split_task_keys(tasks);
    assert_eq!(tasks.len() as u32, JOBS * TASKS);
    for kv in &tasks {
        let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(v["state"], "succeeded", "{}", kv.key);
        assert_eq!(v["attempts"], 1, "{}", kv.key);
    }
    let w = etcd_writes(&etcd.url()).await.unwrap() - before;
    let n = f64::from(JOBS * TASKS);
    println!(
        "etcd writes per task (run to success): {:.3} keys put, {:.3} deleted, in {:.3} transactions",
        w.puts / n,
        w.deletes / n,
        w.txns / n
    );
    // 2 per task: its placement and its end (its own key); each job adds
    // its key, its spec, one assignment record per pass that handed it
    // tasks, and its events (one key per event, a few dozen at most for a
    // job placed in a few passes).
    let per_job = 40.0;
    assert!(
        w.puts <= 2.0 * n + per_job * f64::from(JOBS),
        "{} puts for {n} tasks",
        w.puts
    );
    assert!(w.deletes >= n, "{} deletes for {n} tasks", w.deletes);
}

/// Issue 15: a leader killed while tasks run. They have no keys of their
/// own, only the pass's assignment record (progress on machines is not
/// written); the new leader shows them
/// running, on their machines, with one attempt each, from the cluster's
/// resync; and they end as they would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_new_leader_shows_running_tasks_running_with_their_attempts() {
    const TASKS: u32 = 20;
    let etcd = start_etcd();
    let args = ["--topology", TOPOLOGY, "--heartbeat-interval-ms", "300"];
    let mut first = Scheduler::start(&etcd.url(), &args).await;
    let second = Scheduler::start_standby(&etcd.url(), &args).await;
    let both = format!("{},{}", first.url(), second.url());
    let agent = LocalAgent::start("east-a", "us-east", &both, &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start_with(
        &agent.url(),
        "h",
        "32",
        "128Gi",
        dir.path().join("h"),
        &["--hollow", "2", "--hollow-duration-ms", "600000"],
    );
    first.wait_machines_up(2, Duration::from_secs(30)).await;
    let mut client = first.client().await;
    client
        .submit(job("long", TASKS, &["sleep", "600"]))
        .await
        .unwrap();
    eventually("all running", Duration::from_secs(60), || {
        let first = &first;
        async move {
            let s = first.job("long").await?;
            (counts(&s).running == TASKS).then_some(())
        }
    })
    .await;
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    // No task has a key: the pass's assignment record names them all
    // (progress on machines is not written).
    let stored = store.list("/sched/tasks/long/").await.unwrap().items;
    let (keys, records) = sched_tests::split_task_keys(stored);
    assert!(
        keys.is_empty(),
        "not written while running: {:?}",
        keys[0].key
    );
    let mut named = sched_tests::assigned_by_records(&records);
    named.sort();
    let all: Vec<(String, u32)> = (0..TASKS).map(|i| ("east-a".to_string(), i)).collect();
    assert_eq!(named, all);
    let before: Vec<(u32, String)> = first
        .job("long")
        .await
        .unwrap()
        .tasks
        .iter()
        .map(|t| (t.attempts, t.machine.clone()))
        .collect();
    assert!(before.iter().all(|(a, m)| *a == 1 && !m.is_empty()));

    first.kill9();
    sched_tests::wait_leading(&second.url(), Duration::from_secs(15)).await;
    let after = eventually("running on the new leader", Duration::from_secs(30), || {
        let second = &second;
        async move {
            let s = second.job("long").await?;
            (counts(&s).running == TASKS).then_some(s)
        }
    })
    .await;
    let after: Vec<(u32, String)> = after
        .tasks
        .iter()
        .map(|t| (t.attempts, t.machine.clone()))
        .collect();
    assert_eq!(
        after, before,
        "attempts and machines as the old leader had them"
    );
    // Nothing was written for them by the new leader either.
    let stored = store.list("/sched/tasks/long/").await.unwrap().items;
    let (keys, again) = sched_tests::split_task_keys(stored);
    assert!(keys.is_empty());
    assert_eq!(again, records);
    // The end is written with the attempt: cancel stops them, and each
    // ends cancelled after one attempt.
    let mut client = second.client().await;
    client
        .cancel_job(pb::CancelJobRequest {
            name: "long".into(),
        })
        .await
        .unwrap();
    eventually("cancelled", Duration::from_secs(30), || {
        let store = &store;
        async move {
            let stored = store.list("/sched/tasks/long/").await.ok()?.items;
            let (stored, _) = sched_tests::split_task_keys(stored);
            (stored.len() as u32 == TASKS).then_some(())?;
            stored
                .iter()
                .all(|kv| {
                    let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
                    v["state"] == "cancelled" && v["attempts"] == 1
                })
                .then_some(())
        }
    })
    .await;
}
