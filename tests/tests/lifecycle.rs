//! Task lifecycle end to end (issue 11), with real etcd, the real global
//! scheduler, local agents and node agents running real processes:
//! start failures, restarts with backoff, cancel, delete with garbage
//! collection, and tasks taken back from a cluster that stays down.

use std::path::Path;
use std::time::{Duration, Instant};

use sched_proto::pb;
use sched_store::Store;
use sched_tests::{eventually, start_etcd, LocalAgent, NodeAgent, Scheduler};

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn spec(name: &str, tasks: u32, cpu: &str, command: &[&str]) -> pb::JobSpec {
    pb::JobSpec {
        name: name.to_string(),
        tasks,
        resources: Some(pb::ResourceRequest {
            cpu: cpu.to_string(),
            memory: "64Mi".to_string(),
            disk: None,
            gpu: None,
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn submit(j: pb::JobSpec) -> pb::SubmitRequest {
    pb::SubmitRequest {
        submission_id: j.name.clone(),
        jobs: vec![j],
        ..Default::default()
    }
}

async fn wait_state(
    s: &Scheduler,
    name: &str,
    want: pb::JobState,
    timeout: Duration,
) -> pb::JobStatus {
    eventually(&format!("job {name} {want:?}"), timeout, || async {
        let st = s.job(name).await?;
        (st.summary.as_ref()?.state == want as i32).then_some(st)
    })
    .await
}

async fn wait_tasks(s: &Scheduler, name: &str, want: pb::TaskState, n: usize, timeout: Duration) {
    eventually(
        &format!("{n} task(s) of {name} {want:?}"),
        timeout,
        || async {
            let st = s.job(name).await?;
            (st.tasks.iter().filter(|t| t.state == want as i32).count() == n).then_some(())
        },
    )
    .await
}

fn schedctl(url: &str, args: &[&str]) -> std::process::Output {
    sched_tests::schedctl_command()
        .arg("--server")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

fn write_policy(dir: &Path, text: &str) -> String {
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Cancels `name`; the answer as it came.
async fn cancel(s: &Scheduler, name: &str) -> Result<pb::CancelJobResponse, tonic::Status> {
    s.client()
        .await
        .cancel_job(pb::CancelJobRequest {
            name: name.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Waits until no process's command line matches `pattern` (`pgrep -f`).
async fn no_process(pattern: &str) {
    eventually(
        &format!("no process {pattern:?}"),
        Duration::from_secs(10),
        || async {
            let out = std::process::Command::new("pgrep")
                .args(["-f", pattern])
                .output()
                .ok()?;
            (!out.status.success()).then_some(())
        },
    )
    .await;
}

/// A command that does not exist fails with 127 within its attempts, in
/// seconds, with a reason; never `lost`, never retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_command_that_cannot_start_fails_with_127_within_its_attempts() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let east = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start(&east.url(), "e1", "2", "1Gi", dir.path().join("e1"));
    sched.wait_machines_up(1, Duration::from_secs(20)).await;

    let started = Instant::now();
    let mut c = sched.client().await;
    c.submit(submit(spec("typo", 1, "500m", &["/no/such/binary"])))
        .await
        .unwrap();
    let st = wait_state(
        &sched,
        "typo",
        pb::JobState::Failed,
        Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    let t = &st.tasks[0];
    assert_eq!(t.exit_code, Some(127), "{t:?}");
    // The policy's default: 3 attempts, 1 s then 2 s apart.
    assert!((1..=3).contains(&t.attempts), "{t:?}");
    assert!(t.reason.contains("not found"), "{t:?}");
    assert!(t.reason.contains("not started again"), "{t:?}");
    eprintln!("failed after {} attempt(s) in {took:?}", t.attempts);

    // `never` makes one attempt only.
    let mut once = spec("once", 1, "500m", &["sh", "-c", "exit 3"]);
    once.restart = Some(pb::RestartPolicy {
        policy: "never".into(),
        ..Default::default()
    });
    c.submit(submit(once)).await.unwrap();
    let st = wait_state(
        &sched,
        "once",
        pb::JobState::Failed,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!((st.tasks[0].exit_code, st.tasks[0].attempts), (Some(3), 1));

    // on-failure with room to retry: a task that fails twice, then
    // succeeds, ends succeeded on its third attempt.
    // Tasks run as uids of their own: the marks are in a directory all
    // may write.
    let marker = sched_tests::shared_dir(&dir.path().join("tries"));
    // One file per attempt: each attempt's uid owns what it makes.
    let script = format!(
        "mktemp -p {m} try.XXXXXX > /dev/null; test $(ls {m} | wc -l) -ge 3",
        m = marker.display()
    );
    let mut flaky = spec("flaky", 1, "500m", &["sh", "-c", &script]);
    flaky.restart = Some(pb::RestartPolicy {
        policy: "on-failure".into(),
        max_attempts: Some(5),
        backoff: Some(sched_proto::wkt::duration(200)),
    });
    c.submit(submit(flaky)).await.unwrap();
    let st = wait_state(
        &sched,
        "flaky",
        pb::JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(st.tasks[0].attempts, 3);
    let out = schedctl(&sched.url(), &["describe", "job", "flaky"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("restarting"), "{text}");
    let out = schedctl(&sched.url(), &["get", "job", "typo", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"][0]["state"], "failed");
    assert_eq!(v["tasks"][0]["exit_code"], 127);
    assert!(v["tasks"][0]["attempts"].as_u64().unwrap() >= 1);
}

/// `schedctl dev --submit` of a job that cannot start ends promptly, with
/// exit status 1.
#[test]
fn dev_with_a_typo_in_the_command_exits_1_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("typo.yaml");
    std::fs::write(
        &jobs,
        "jobs:\n  - {name: typo, tasks: 2, resources: {cpu: 100m, memory: 64Mi}, command: [slep, \"1\"]}\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(sched_tests::bin("schedctl"))
        .current_dir(sched_tests::repo())
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--exit-when-done",
            "--submit",
        ])
        .arg(&jobs)
        .arg("--dir")
        .arg(dir.path().join("dev"))
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not succeeded: typo"), "{stderr}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

/// Cancel: running tasks are stopped and end `cancelled`, pending ones are
/// cancelled at once and leave the pending limit; a second cancel is OK;
/// a finished job cannot be cancelled and stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn cancel_stops_running_tasks_and_releases_the_pending_limit() {
    let etcd = start_etcd();
    let sched = Scheduler::start(
        &etcd.url(),
        &["--topology", TOPOLOGY, "--max-pending-tasks", "10"],
    )
    .await;
    let east = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start(&east.url(), "e1", "2", "1Gi", dir.path().join("e1"));
    sched.wait_machines_up(1, Duration::from_secs(20)).await;
    let mut c = sched.client().await;

    // 2 of 5 one-cpu tasks run on the 2-cpu machine, 3 wait.
    c.submit(submit(spec("busy", 5, "1", &["sleep", "600"])))
        .await
        .unwrap();
    wait_tasks(
        &sched,
        "busy",
        pb::TaskState::Running,
        2,
        Duration::from_secs(20),
    )
    .await;
    let r = cancel(&sched, "busy").await.unwrap();
    assert_eq!(r.state, pb::JobState::Cancelled as i32);
    wait_tasks(
        &sched,
        "busy",
        pb::TaskState::Cancelled,
        5,
        Duration::from_secs(20),
    )
    .await;
    // Idempotent.
    cancel(&sched, "busy").await.unwrap();
    // The processes are gone.
    no_process("^sleep 600$").await;

    // Twice the limit's worth of jobs that cannot run (4 cpu each on a
    // 2-cpu machine is refused at submit; 2 cpu each waits behind a
    // blocker), cancelled in turn: the limit is free again each time.
    c.submit(submit(spec("blocker", 1, "2", &["sleep", "600"])))
        .await
        .unwrap();
    wait_tasks(
        &sched,
        "blocker",
        pb::TaskState::Running,
        1,
        Duration::from_secs(20),
    )
    .await;
    for round in 0..2 {
        let names: Vec<String> = (0..2).map(|i| format!("wait-{round}-{i}")).collect();
        for n in &names {
            c.submit(submit(spec(n, 5, "2", &["true"]))).await.unwrap();
        }
        let refused = c
            .submit(submit(spec(&format!("over-{round}"), 1, "2", &["true"])))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        for n in &names {
            cancel(&sched, n).await.unwrap();
        }
    }
    c.submit(submit(spec("after", 5, "2", &["true"])))
        .await
        .expect("accepted once the cancelled jobs left the pending count");

    // A succeeded job: cancel is refused and changes nothing.
    c.submit(submit(spec("done", 1, "100m", &["true"])))
        .await
        .unwrap();
    cancel(&sched, "blocker").await.unwrap();
    wait_state(
        &sched,
        "done",
        pb::JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    let e = cancel(&sched, "done").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let st = sched.job("done").await.unwrap();
    assert_eq!(st.summary.unwrap().state, pb::JobState::Succeeded as i32);
    let out = schedctl(&sched.url(), &["cancel", "done"]);
    assert_eq!(out.status.code(), Some(1));
}

/// Delete: no key names the job afterwards, the node drops its
/// directories after the retention, and the name runs again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn delete_removes_every_trace_and_frees_the_name() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "lifecycle: {task_dir_retention: 1s}\n");
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY, "--policy", &policy]).await;
    let east = LocalAgent::start_with(
        "east-a",
        "us-east",
        &sched.url(),
        &etcd.url(),
        &["--policy", &policy],
    )
    .await;
    let work = dir.path().join("e1");
    let _node = NodeAgent::start(&east.url(), "e1", "2", "1Gi", work.clone());
    sched.wait_machines_up(1, Duration::from_secs(20)).await;
    let mut c = sched.client().await;

    c.submit(submit(spec("x", 2, "100m", &["sh", "-c", "echo first"])))
        .await
        .unwrap();
    wait_state(
        &sched,
        "x",
        pb::JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    assert!(work.join("tasks/x").exists());
    let out = schedctl(&sched.url(), &["delete", "job", "x"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sched.job("x").await.is_none());

    let store = sched_store::EtcdStore::connect(&[etcd.url()])
        .await
        .unwrap();
    let names_x = |k: &str| k.split('/').any(|part| part == "x");
    eventually("no key names job x", Duration::from_secs(10), || async {
        let all = store.list("/").await.ok()?;
        let left: Vec<&str> = all
            .items
            .iter()
            .map(|kv| kv.key.as_str())
            .filter(|k| names_x(k))
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    eventually(
        "the node dropped x's directories",
        Duration::from_secs(30),
        || async {
            let gone = !work.join("tasks/x").exists();
            let trash_empty = std::fs::read_dir(work.join("trash"))
                .map(|d| d.count() == 0)
                .unwrap_or(true);
            (gone && trash_empty).then_some(())
        },
    )
    .await;

    // The name is free: a new x runs, in a fresh directory.
    c.submit(submit(spec("x", 1, "100m", &["sh", "-c", "echo second"])))
        .await
        .unwrap();
    let st = wait_state(
        &sched,
        "x",
        pb::JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(st.tasks.len(), 1);
    assert_eq!(st.tasks[0].attempts, 1);

    // A running job is deleted only with --force, which stops it.
    c.submit(submit(spec("long", 1, "100m", &["sleep", "600"])))
        .await
        .unwrap();
    wait_tasks(
        &sched,
        "long",
        pb::TaskState::Running,
        1,
        Duration::from_secs(20),
    )
    .await;
    let out = schedctl(&sched.url(), &["delete", "job", "long"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = schedctl(&sched.url(), &["delete", "job", "long", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sched.job("long").await.is_none());
    no_process("^sleep 600$").await;

    // ttl_after_finished deletes by itself.
    let mut brief = spec("brief", 1, "100m", &["true"]);
    brief.ttl_after_finished = Some(sched_proto::wkt::duration(1000));
    c.submit(submit(brief)).await.unwrap();
    eventually(
        "brief deleted after its ttl",
        Duration::from_secs(20),
        || async { sched.job("brief").await.is_none().then_some(()) },
    )
    .await;
}

/// A local agent killed for good: after the policy's timeout its tasks are
/// taken back and run on the other cluster, and never run twice at once
/// (its nodes fence themselves first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn tasks_of_a_cluster_that_stays_down_run_elsewhere_never_twice() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "lifecycle: {cluster_down_timeout: 3s}\n");
    let sched = Scheduler::start(
        &etcd.url(),
        &[
            "--topology",
            TOPOLOGY,
            "--policy",
            &policy,
            "--heartbeat-timeout-ms",
            "1000",
        ],
    )
    .await;
    let mut east = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let west = LocalAgent::start("west-a", "us-west", &sched.url(), &etcd.url()).await;
    let fence = ["--fence-timeout-ms", "1500"];
    let _e1 = NodeAgent::start_with(&east.url(), "e1", "2", "1Gi", dir.path().join("e1"), &fence);
    let _w1 = NodeAgent::start_with(&west.url(), "w1", "2", "1Gi", dir.path().join("w1"), &fence);
    sched.wait_machines_up(2, Duration::from_secs(20)).await;

    // Each task appends "<cluster> <time>" to its own beat file (one per
    // cluster: each copy runs as a uid of its own) every 50 ms until it is
    // stopped.
    let beats = sched_tests::shared_dir(&dir.path().join("beats"));
    let script = format!(
        "while true; do echo \"$SCHED_CLUSTER $(date +%s.%N)\" >> {}/$SCHED_TASK_INDEX.$SCHED_CLUSTER; sleep 0.05; done",
        beats.display()
    );
    let mut j = spec("steady", 2, "500m", &["sh", "-c", &script]);
    j.locality = Some("us-east".into());
    let mut c = sched.client().await;
    c.submit(submit(j)).await.unwrap();
    eventually(
        "both tasks running on east-a",
        Duration::from_secs(20),
        || async {
            let st = sched.job("steady").await?;
            st.tasks
                .iter()
                .all(|t| t.state == pb::TaskState::Running as i32 && t.cluster == "east-a")
                .then_some(())
        },
    )
    .await;

    east.kill9();
    let killed = Instant::now();
    eventually(
        "both tasks running on west-a",
        Duration::from_secs(30),
        || async {
            let st = sched.job("steady").await?;
            st.tasks
                .iter()
                .all(|t| t.state == pb::TaskState::Running as i32 && t.cluster == "west-a")
                .then_some(())
        },
    )
    .await;
    let moved = killed.elapsed();
    eprintln!("tasks of the dead cluster running elsewhere {moved:?} after its agent was killed");
    // Heartbeat timeout 1 s + down timeout 3 s + a pass and a start.
    assert!(moved < Duration::from_secs(15), "{moved:?}");
    // Let the west copies beat a while, then check that no east beat comes
    // after the first west beat, for either task.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for index in 0..2 {
        let text = ["east-a", "west-a"]
            .map(|c| std::fs::read_to_string(beats.join(format!("{index}.{c}"))).unwrap())
            .concat();
        let stamp =
            |line: &str, who: &str| -> Option<f64> { line.strip_prefix(who)?.trim().parse().ok() };
        let last_east = text
            .lines()
            .filter_map(|l| stamp(l, "east-a"))
            .fold(0.0, f64::max);
        let first_west = text
            .lines()
            .filter_map(|l| stamp(l, "west-a"))
            .fold(f64::MAX, f64::min);
        assert!(last_east > 0.0 && first_west < f64::MAX, "{text}");
        assert!(
            last_east < first_west,
            "task {index} ran on both clusters at once: east until {last_east}, west from {first_west}"
        );
    }
    let out = schedctl(&sched.url(), &["describe", "job", "steady"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("taken_back"), "{text}");

    // The cluster is gone for good: deleting it is allowed (it is down).
    let out = schedctl(&sched.url(), &["delete", "cluster", "east-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clusters = c
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters;
    assert!(clusters.iter().all(|c| c.name != "east-a"), "{clusters:?}");
    // And a cluster that is up is not deleted.
    let out = schedctl(&sched.url(), &["delete", "cluster", "west-a"]);
    assert_eq!(out.status.code(), Some(1));
    cancel(&sched, "steady").await.unwrap();
}

/// A backlog of finished jobs expiring together (here: a shorter default
/// `ttl_after_finished` put in force once they have all finished) is
/// deleted in full: the deletes go in as many commits as etcd's operation
/// limit needs. (With a fixed 60 jobs a commit, three operations each
/// outgrew the limit, and every sweep failed on the same batch for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_backlog_of_expired_jobs_is_deleted_in_full() {
    const JOBS: usize = 90;
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let east = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let _node = NodeAgent::start(&east.url(), "e1", "8", "8Gi", dir.path().join("e1"));
    sched.wait_machines_up(1, Duration::from_secs(20)).await;
    let mut c = sched.client().await;
    let names: Vec<String> = (0..JOBS).map(|i| format!("done-{i:03}")).collect();
    c.submit(pb::SubmitRequest {
        submission_id: "backlog".to_string(),
        jobs: names.iter().map(|n| spec(n, 1, "10m", &["true"])).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    for n in &names {
        wait_state(&sched, n, pb::JobState::Succeeded, Duration::from_secs(60)).await;
    }
    let policy = write_policy(dir.path(), "lifecycle: {ttl_after_finished: 1s}\n");
    let out = schedctl(&sched.url(), &["policy", "apply", &policy]);
    assert!(
        out.status.success(),
        "policy apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        &format!("all {JOBS} expired jobs deleted"),
        Duration::from_secs(30),
        || async {
            let mut c = sched.client().await;
            let left = sched_tests::list_all_jobs!(c).ok()?.into_inner().jobs;
            left.is_empty().then_some(())
        },
    )
    .await;
    let store = sched_store::EtcdStore::connect(&[etcd.url()])
        .await
        .unwrap();
    let tasks = store.list("/sched/tasks/").await.unwrap();
    assert!(
        tasks.items.is_empty(),
        "task keys left: {}",
        tasks.items.len()
    );
}
