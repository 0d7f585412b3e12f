//! The global scheduler end to end: real etcd, the real binary, gRPC on
//! loopback, clusters that speak the real protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sched_proto::pb;
use sched_store::{EtcdStore, Store};
use sched_tests::{eventually, job_keys, start_etcd, ClusterSpec, Lines, Scheduler, TestCluster};

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn job(name: &str, tasks: u32, cpu: &str, memory: &str, locality: Option<&str>) -> pb::JobSpec {
    pb::JobSpec {
        name: name.to_string(),
        tasks,
        resources: Some(pb::ResourceRequest {
            cpu: cpu.to_string(),
            memory: memory.to_string(),
            disk: None,
            gpu: None,
        }),
        priority: None,
        locality: locality.map(str::to_string),
        constraints: Default::default(),
        command: vec!["true".to_string()],
        ..Default::default()
    }
}

fn submit_one(spec: pb::JobSpec, id: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![spec],
        submission_id: id.to_string(),
    }
}

async fn status(s: &Scheduler, name: &str) -> Option<pb::JobStatus> {
    s.job(name).await
}

fn counts(s: &pb::JobStatus) -> pb::TaskCounts {
    s.summary
        .clone()
        .unwrap_or_default()
        .counts
        .unwrap_or_default()
}

/// The crash test: kill -9 the scheduler in the middle of a stream
/// of submissions, restart it; every acknowledged job is there once, no
/// task is handed to two clusters or placed twice, and placement goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn kill_9_during_submissions_loses_nothing_and_places_nothing_twice() {
    let etcd = start_etcd();
    let mut sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let east = TestCluster::start(&sched.url(), ClusterSpec::new("east-a", "us-east"));
    let west = TestCluster::start(&sched.url(), ClusterSpec::new("west-a", "us-west"));
    eventually("two clusters up", Duration::from_secs(10), || async {
        let r = sched
            .client()
            .await
            .list_clusters(pb::ListClustersRequest {})
            .await
            .ok()?;
        (r.into_inner().clusters.iter().filter(|c| c.up).count() == 2).then_some(())
    })
    .await;

    const JOBS: usize = 120;
    const TASKS: u32 = 10;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let submitter = {
        let (acked, refused) = (acked.clone(), refused.clone());
        let mut client = sched.client().await;
        tokio::spawn(async move {
            for i in 0..JOBS {
                let name = format!("job-{i:03}");
                let loc = if i % 2 == 0 { "us-east" } else { "us-west" };
                let req = submit_one(
                    job(&name, TASKS, "100m", "64Mi", Some(loc)),
                    &format!("sub-{i}"),
                );
                // Retry with the same submission id until it is acknowledged,
                // as schedctl does.
                loop {
                    match client.submit(req.clone()).await {
                        Ok(_) => break,
                        Err(s) => {
                            assert!(
                                matches!(
                                    s.code(),
                                    tonic::Code::Unavailable
                                        | tonic::Code::ResourceExhausted
                                        | tonic::Code::Unknown
                                        | tonic::Code::Cancelled
                                ),
                                "unexpected refusal of {name}: {s:?}"
                            );
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acked.lock().unwrap().push(name);
            }
        })
    };
    // Kill it once a third of the jobs are in.
    eventually(
        "a third of the submissions",
        Duration::from_secs(30),
        || async { (acked.lock().unwrap().len() >= JOBS / 3).then_some(()) },
    )
    .await;
    let refused_before = refused.load(Ordering::Relaxed);
    sched.kill9();
    let acked_before: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked_before.len() < JOBS,
        "the kill came after the last submission"
    );
    // Submissions go on while it is down: they are refused and retried.
    eventually(
        "a submission refused while the scheduler is down",
        Duration::from_secs(10),
        || async { (refused.load(Ordering::Relaxed) > refused_before).then_some(()) },
    )
    .await;
    sched.restart().await;
    submitter.await.unwrap();

    // Every job acknowledged before the crash is in etcd and served.
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    let keys: BTreeSet<String> = job_keys(&store).await.into_iter().collect();
    for name in &acked_before {
        assert!(keys.contains(&format!("/sched/jobs/{name}")), "{name} lost");
    }
    assert_eq!(keys.len(), JOBS, "one key per job, nothing duplicated");

    // Placement continues until every task is placed.
    let total = JOBS as u64 * TASKS as u64;
    eventually("every task placed", Duration::from_secs(60), || async {
        let n = east.log().placed.len() + west.log().placed.len();
        (n as u64 == total).then_some(())
    })
    .await;
    let e = east.log();
    let w = west.log();
    let both: Vec<_> = e
        .placed
        .keys()
        .filter(|k| w.placed.contains_key(*k))
        .collect();
    assert!(both.is_empty(), "tasks placed on two clusters: {both:?}");
    // Locality was honoured: even jobs east, odd jobs west.
    assert!(e
        .placed
        .keys()
        .all(|(j, _)| j[4..].parse::<u32>().unwrap() % 2 == 0));

    // The scheduler's view agrees, and etcd holds one record per task.
    eventually(
        "the scheduler sees every task placed",
        Duration::from_secs(30),
        || async {
            for i in 0..JOBS {
                let s = status(&sched, &format!("job-{i:03}")).await?;
                if counts(&s).placed != TASKS {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // One assignment record per job and pass names each task once; no
    // task has a key of its own (progress on a machine is not written).
    let items = store.list("/sched/tasks/").await.unwrap().items;
    let (tasks, records) = sched_tests::split_task_keys(items);
    assert!(
        tasks.is_empty(),
        "task keys: {:?}",
        tasks.first().map(|kv| &kv.key)
    );
    assert!(records.len() <= 2 * JOBS, "{} records", records.len());
    assert_eq!(
        sched_tests::assigned_by_records(&records).len() as u64,
        total
    );
    east.stop().await;
    west.stop().await;
}

/// Bad input is refused with INVALID_ARGUMENT naming the field, through
/// `schedctl`, and nothing of it reaches etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let cluster = TestCluster::start(&sched.url(), ClusterSpec::new("east-a", "us-east"));
    eventually(
        "the cluster registered",
        Duration::from_secs(10),
        || async {
            let r = sched
                .client()
                .await
                .list_clusters(pb::ListClustersRequest {})
                .await
                .ok()?;
            r.into_inner().clusters.iter().any(|c| c.up).then_some(())
        },
    )
    .await;
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("malformed yaml", "jobs: [ {name: web", "<document>"),
        (
            "unknown field",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 1Gi}, colour: red, command: [\"true\"]}\n",
            "colour",
        ),
        (
            "negative quantity",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: \"-1\", memory: 1Gi}, command: [\"true\"]}\n",
            "jobs[0].resources.cpu",
        ),
        (
            "absurd quantity",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 999999999Ti}, command: [\"true\"]}\n",
            "jobs[0].resources.memory",
        ),
        (
            "zero tasks",
            "jobs:\n  - {name: web, tasks: 0, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"]}\n",
            "jobs[0].tasks",
        ),
        (
            "unknown location",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 1Gi}, locality: mars, command: [\"true\"]}\n",
            "jobs[0].locality",
        ),
        (
            "duplicate name in the file",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"]}\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"]}\n",
            "jobs[1].name",
        ),
        (
            "oversize request",
            "jobs:\n  - {name: ok, tasks: 1, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"]}\n  - {name: web, tasks: 1, resources: {cpu: 500, memory: 1Gi}, command: [\"true\"]}\n",
            "jobs[1].resources.cpu",
        ),
        (
            "no command",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 1Gi}}\n",
            "jobs[0].command",
        ),
        (
            "bad restart policy",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"], restart: {policy: always}}\n",
            "jobs[0].restart.policy",
        ),
        (
            "bad ttl",
            "jobs:\n  - {name: web, tasks: 1, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"], ttl_after_finished: soon}\n",
            "jobs[0].ttl_after_finished",
        ),
        (
            "bad name",
            "jobs:\n  - {name: Web_1, tasks: 1, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"]}\n",
            "jobs[0].name",
        ),
    ];
    for (what, text, field) in cases {
        let path = dir.path().join("jobs.yaml");
        std::fs::write(&path, text).unwrap();
        let out = sched_tests::schedctl_command()
            .args([
                "--server",
                &sched.url(),
                "submit",
                "-f",
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("INVALID_ARGUMENT"), "{what}: {stderr}");
        assert!(
            stderr.contains(field),
            "{what}: {stderr} should name {field}"
        );
        assert!(job_keys(&store).await.is_empty(), "{what} wrote to etcd");
    }

    // `schedctl run` goes through the same checks.
    let out = sched_tests::schedctl_command()
        .args([
            "--server",
            &sched.url(),
            "run",
            "web",
            "--cpu",
            "-2",
            "--memory",
            "1Gi",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("jobs[0].resources.cpu"), "{stderr}");

    // A name already taken.
    let mut c = sched.client().await;
    c.submit(submit_one(job("web", 1, "1", "1Gi", None), "a"))
        .await
        .unwrap();
    let err = c
        .submit(submit_one(job("web", 1, "1", "1Gi", None), "b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("jobs[0].name"), "{}", err.message());
    // ... while a retry of the same submission succeeds without a second job.
    c.submit(submit_one(job("web", 1, "1", "1Gi", None), "a"))
        .await
        .unwrap();
    assert_eq!(job_keys(&store).await, ["/sched/jobs/web"]);
    cluster.stop().await;
}

/// Tasks a cluster hands back go to the next best cluster; `describe`
/// shows the hand-back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn handed_back_tasks_go_to_the_next_best_cluster() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let mut small = ClusterSpec::new("east-a", "us-east");
    small.slots = 5;
    let east = TestCluster::start(&sched.url(), small);
    let west = TestCluster::start(&sched.url(), ClusterSpec::new("west-a", "us-west"));
    eventually("two clusters up", Duration::from_secs(10), || async {
        let r = sched
            .client()
            .await
            .list_clusters(pb::ListClustersRequest {})
            .await
            .ok()?;
        (r.into_inner().clusters.iter().filter(|c| c.up).count() == 2).then_some(())
    })
    .await;
    let mut c = sched.client().await;
    c.submit(submit_one(job("web", 12, "1", "1Gi", Some("us-east")), "s"))
        .await
        .unwrap();
    eventually("12 tasks placed", Duration::from_secs(30), || async {
        let s = status(&sched, "web").await?;
        (counts(&s).placed == 12).then_some(())
    })
    .await;
    assert_eq!(east.log().placed.len(), 5);
    assert_eq!(west.log().placed.len(), 7);
    let s = status(&sched, "web").await.unwrap();
    let by_cluster: BTreeMap<String, usize> = s.tasks.iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(t.cluster.clone()).or_default() += 1;
        m
    });
    assert_eq!(by_cluster.get("east-a"), Some(&5));
    assert_eq!(by_cluster.get("west-a"), Some(&7));

    let out = sched_tests::schedctl_command()
        .args(["--server", &sched.url(), "describe", "job", "web"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("handed back by cluster east-a"), "{text}");
    assert!(text.contains("west-a: 7 placed"), "{text}");
    east.stop().await;
    west.stop().await;
}

/// A cluster that stops heartbeating is marked down and gets no new work;
/// `describe` explains pending tasks with the core's reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_silent_cluster_is_marked_down_and_gets_no_new_work() {
    let etcd = start_etcd();
    let sched = Scheduler::start(
        &etcd.url(),
        &[
            "--topology",
            TOPOLOGY,
            "--heartbeat-interval-ms",
            "100",
            "--heartbeat-timeout-ms",
            "600",
        ],
    )
    .await;
    let east = TestCluster::start(&sched.url(), ClusterSpec::new("east-a", "us-east"));
    let mut small = ClusterSpec::new("west-a", "us-west");
    small.machines = 1;
    small.cpu_millis = 4000;
    let west = TestCluster::start(&sched.url(), small);
    eventually("two clusters up", Duration::from_secs(10), || async {
        let r = sched
            .client()
            .await
            .list_clusters(pb::ListClustersRequest {})
            .await
            .ok()?;
        (r.into_inner().clusters.iter().filter(|c| c.up).count() == 2).then_some(())
    })
    .await;
    east.stop().await;
    eventually("east-a marked down", Duration::from_secs(10), || async {
        let r = sched
            .client()
            .await
            .list_clusters(pb::ListClustersRequest {})
            .await
            .ok()?;
        r.into_inner()
            .clusters
            .iter()
            .any(|c| c.name == "east-a" && !c.up)
            .then_some(())
    })
    .await;
    // Prefers us-east, but east-a is down: all goes west, as far as it fits
    // (4 cpu: 4 tasks of 1 cpu); the rest waits, with a reason.
    let mut c = sched.client().await;
    c.submit(submit_one(job("web", 6, "1", "1Gi", Some("us-east")), "s"))
        .await
        .unwrap();
    eventually("4 tasks placed west", Duration::from_secs(20), || async {
        (west.log().placed.len() == 4).then_some(())
    })
    .await;
    let s = status(&sched, "web").await.unwrap();
    assert!(s.tasks.iter().all(|t| t.cluster != "east-a"));
    let out = sched_tests::schedctl_command()
        .args(["--server", &sched.url(), "describe", "job", "web"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Why not running:"), "{text}");
    assert!(text.contains("2 task(s) pending"), "{text}");
    assert!(
        text.contains("cluster east-a") && text.contains("down"),
        "{text}"
    );
    west.stop().await;
}

/// Bounded queues: past `--max-pending-tasks`, submit answers
/// RESOURCE_EXHAUSTED, and nothing of the refused job is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn submit_past_the_pending_limit_is_resource_exhausted() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--max-pending-tasks", "100"]).await;
    let mut c = sched.client().await;
    c.submit(submit_one(job("a", 80, "1", "1Gi", None), "1"))
        .await
        .unwrap();
    let err = c
        .submit(submit_one(job("b", 50, "1", "1Gi", None), "2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    assert_eq!(job_keys(&store).await, ["/sched/jobs/a"]);
    // Cancelling does not free pending room by itself, but a job that fits does go in.
    c.submit(submit_one(job("c", 20, "1", "1Gi", None), "3"))
        .await
        .unwrap();
}

/// `schedctl` retries while the scheduler is down, and the submission lands
/// once it is up; `get job -o json` has the documented fields; cancel works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn schedctl_retries_until_the_scheduler_is_back() {
    let etcd = start_etcd();
    let mut sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let url = sched.url();
    sched.kill9();
    let mut child = sched_tests::schedctl_command()
        .args([
            "--server", &url, "run", "hello", "--tasks", "3", "--cpu", "500m", "--memory", "256Mi",
            "--", "echo", "hi",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Lines::follow(child.stderr.take().unwrap());
    // It finds the scheduler down and says it will retry; only then is the
    // scheduler started again.
    let line = stderr.wait_for("retrying", Duration::from_secs(20)).await;
    assert!(line.contains("UNAVAILABLE"), "{line}");
    sched.restart().await;
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let stderr = stderr.all().await;
    assert!(exit.success(), "{stderr}");

    let out = sched_tests::schedctl_command()
        .args(["--server", &url, "get", "job", "hello", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "hello");
    assert_eq!(v["state"], "pending");
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(t["index"], i);
        assert_eq!(t["state"], "pending");
        for field in ["cluster", "machine", "exit_code"] {
            assert!(t.get(field).is_some(), "task has {field}");
        }
    }
    let out = sched_tests::schedctl_command()
        .args(["--server", &url, "cancel", "hello"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = status(&sched, "hello").await.unwrap();
    assert_eq!(s.summary.unwrap().state, pb::JobState::Cancelled as i32);
    // Cancelled survives a restart: it is in etcd.
    sched.kill9();
    sched.restart().await;
    let s = status(&sched, "hello").await.unwrap();
    assert_eq!(s.summary.unwrap().state, pb::JobState::Cancelled as i32);
    // Unknown job: exit 1 with NOT_FOUND.
    let out = sched_tests::schedctl_command()
        .args(["--server", &url, "get", "job", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
}

/// SIGTERM stops the scheduler cleanly and promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn sigterm_stops_the_scheduler_within_a_deadline() {
    let etcd = start_etcd();
    let mut sched = Scheduler::start(&etcd.url(), &[]).await;
    assert!(sched.terminate(Duration::from_secs(10)));
}

/// `schedctl submit --wait` returns once every task is on a machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn submit_wait_returns_once_every_task_is_placed() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let cluster = TestCluster::start(&sched.url(), ClusterSpec::new("eu-a", "eu-west"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.yaml");
    std::fs::write(
        &path,
        "jobs:\n  - {name: a, tasks: 5, resources: {cpu: 1, memory: 1Gi}, command: [\"true\"]}\n  - {name: b, tasks: 7, resources: {cpu: 500m, memory: 256Mi}, locality: eu-west, command: [\"true\"]}\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let url = sched.url();
        move || {
            sched_tests::schedctl_command()
                .args([
                    "--server",
                    &url,
                    "submit",
                    "-f",
                    path.to_str().unwrap(),
                    "--wait",
                    "--timeout",
                    "60",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("job/a submitted") && stdout.contains("job/b submitted"),
        "{stdout}"
    );
    assert_eq!(cluster.log().placed.len(), 12);
    let b = status(&sched, "b").await.unwrap();
    assert_eq!(counts(&b).placed, 7);
    assert_eq!(b.summary.unwrap().state, pb::JobState::Running as i32);
    cluster.stop().await;
}
