//! The whole stack end to end: real etcd, the real global scheduler, local
//! agents and node agents running real processes, on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, start_etcd, LocalAgent, NodeAgent, Scheduler};
use tokio_util::sync::CancellationToken;

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn job(
    name: &str,
    tasks: u32,
    cpu: &str,
    locality: Option<&str>,
    script: &str,
) -> pb::SubmitRequest {
    pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![pb::JobSpec {
            name: name.to_string(),
            tasks,
            resources: Some(pb::ResourceRequest {
                cpu: cpu.to_string(),
                memory: "128Mi".to_string(),
                disk: None,
                gpu: None,
            }),
            priority: None,
            locality: locality.map(str::to_string),
            constraints: Default::default(),
            command: vec!["sh".to_string(), "-c".to_string(), script.to_string()],
            ..Default::default()
        }],
        submission_id: name.to_string(),
    }
}

async fn status(s: &Scheduler, name: &str) -> Option<pb::JobStatus> {
    s.job(name).await
}

async fn wait_state(
    s: &Scheduler,
    name: &str,
    want: pb::JobState,
    timeout: Duration,
) -> pb::JobStatus {
    eventually(&format!("job {name} {want:?}"), timeout, || async {
        let st = status(s, name).await?;
        (st.summary.as_ref()?.state == want as i32).then_some(st)
    })
    .await
}

/// Waits until `n` machines are up, as the local agents and the global
/// scheduler (through heartbeats) both see them.
async fn wait_machines(s: &Scheduler, n: usize) {
    eventually(
        &format!("{n} machines up"),
        Duration::from_secs(20),
        || async {
            let up = machines(s).await.iter().filter(|m| m.up).count();
            let seen: u32 = s
                .client()
                .await
                .list_clusters(pb::ListClustersRequest {})
                .await
                .ok()?
                .into_inner()
                .clusters
                .iter()
                .filter(|c| c.up)
                .map(|c| c.machines)
                .sum();
            (up == n && seen as usize == n).then_some(())
        },
    )
    .await;
}

async fn machines(s: &Scheduler) -> Vec<pb::MachineStatus> {
    s.client()
        .await
        .list_machines(pb::ListMachinesRequest {
            cluster: String::new(),
        })
        .await
        .map(|r| r.into_inner().machines)
        .unwrap_or_default()
}

fn schedctl(url: &str, args: &[&str]) -> std::process::Output {
    sched_tests::schedctl_command()
        .arg("--server")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

/// Seconds since the epoch as a float, from a task's output line.
fn stamps(text: &str, tag: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(tag))
        .filter_map(|t| t.trim().parse().ok())
        .collect()
}

/// A job of more tasks than a machine holds runs to `succeeded` across
/// machines and clusters; each task's log is its own; no machine ever holds
/// more than its declared cpu; the cluster too small for the job sends the
/// rest to the next best cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_job_runs_to_success_across_machines_and_clusters() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let east = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let west = LocalAgent::start("west-a", "us-west", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let _nodes: Vec<NodeAgent> = [("e1", &east), ("e2", &east), ("w1", &west), ("w2", &west)]
        .iter()
        .map(|(n, a)| NodeAgent::start(&a.url(), n, "2", "1Gi", dir.path().join(n)))
        .collect();
    wait_machines(&sched, 4).await;

    // 7 tasks of 1 cpu preferring us-east, whose cluster has 4 cpu: 4 run
    // there, 3 go west. Each task prints who it is and when it ran.
    let script = "echo \"I am $SCHED_JOB/$SCHED_TASK_INDEX on $SCHED_MACHINE in $SCHED_CLUSTER\"; \
                  echo \"start $(date +%s.%N)\"; sleep 1; echo \"end $(date +%s.%N)\"";
    sched
        .client()
        .await
        .submit(job("wide", 7, "1", Some("us-east"), script))
        .await
        .unwrap();

    // Sample the machines until it is done: never more allocated than
    // capacity.
    let done = CancellationToken::new();
    let sampler = {
        let url = sched.url();
        let done = done.clone();
        tokio::spawn(async move {
            let mut c = sched_proto::pb::scheduler_service_client::SchedulerServiceClient::new(
                sched_tests::channel(&url),
            );
            let mut worst = 0u64;
            while !done.is_cancelled() {
                if let Ok(r) = c
                    .list_machines(pb::ListMachinesRequest {
                        cluster: String::new(),
                    })
                    .await
                {
                    for m in r.into_inner().machines {
                        let (a, cap) = (
                            m.allocated.unwrap_or_default(),
                            m.capacity.unwrap_or_default(),
                        );
                        assert!(
                            a.cpu_millis <= cap.cpu_millis,
                            "{} over capacity: {a:?}",
                            m.name
                        );
                        worst = worst.max(a.cpu_millis);
                    }
                }
                tokio::select! {
                    _ = done.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            worst
        })
    };
    let st = wait_state(
        &sched,
        "wide",
        pb::JobState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    done.cancel();
    assert!(sampler.await.unwrap() > 0, "the sampler saw tasks running");
    let by_cluster = st
        .tasks
        .iter()
        .fold(BTreeMap::<String, u32>::new(), |mut m, t| {
            *m.entry(t.cluster.clone()).or_default() += 1;
            m
        });
    // East fills first (4 at once) and the rest goes west; a task handed
    // back may land on east again once a task there has finished (a loaded
    // machine can be that slow), so east may end with more than 4.
    let (east_n, west_n) = (
        by_cluster.get("east-a").copied().unwrap_or(0),
        by_cluster.get("west-a").copied().unwrap_or(0),
    );
    assert!(east_n >= 4 && west_n >= 1, "{by_cluster:?}");
    assert_eq!(east_n + west_n, 7, "{by_cluster:?}");

    // Each log is its own task's, and per machine at most 2 tasks (2 cpu)
    // ran at any instant.
    let mut intervals: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for t in &st.tasks {
        assert_eq!(t.exit_code, Some(0));
        let out = schedctl(&sched.url(), &["logs", &format!("wide/{}", t.index)]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "I am wide/{} on {} in {}",
                t.index, t.machine, t.cluster
            )),
            "{text}"
        );
        let (s, e) = (stamps(&text, "start "), stamps(&text, "end "));
        intervals
            .entry(t.machine.clone())
            .or_default()
            .push((s[0], e[0]));
    }
    for (machine, spans) in &intervals {
        for &(s, _) in spans {
            let overlapping = spans.iter().filter(|&&(a, b)| a <= s && s < b).count();
            assert!(
                overlapping <= 2,
                "{machine} ran {overlapping} 1-cpu tasks at once on 2 cpu"
            );
        }
    }
}

/// Kill -9 a node agent while its tasks run: they are killed by their lease,
/// become `lost`, run again on another machine, and the job finishes; the
/// two copies never run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn kill_9_a_node_agent_and_its_tasks_run_again_elsewhere() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeAgent> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| NodeAgent::start(&agent.url(), n, "1", "1Gi", dir.path().join(n)))
        .collect();
    wait_machines(&sched, 3).await;
    // Two tasks, each a second-by-second ticker for 4 s.
    let script = "for i in 1 2 3 4 5 6 7 8; do echo \"tick $(date +%s.%N)\"; sleep 0.5; done";
    sched
        .client()
        .await
        .submit(job("ticker", 2, "1", None, script))
        .await
        .unwrap();
    let st = wait_state(
        &sched,
        "ticker",
        pb::JobState::Running,
        Duration::from_secs(20),
    )
    .await;
    let victim_machine = st.tasks[0].machine.clone();
    let victim = nodes.iter_mut().find(|n| n.name == victim_machine).unwrap();
    // Killed once task 0 has ticked there, so the first copy left a trace.
    let first_copy = victim.work_dir.join("tasks/ticker/0/1/stdout");
    eventually("task 0's first tick", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&first_copy).ok()?;
        (!stamps(&text, "tick ").is_empty()).then_some(())
    })
    .await;
    victim.kill9();

    let st = wait_state(
        &sched,
        "ticker",
        pb::JobState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    let moved = &st.tasks[0];
    assert_ne!(moved.machine, victim_machine, "task 0 ran again elsewhere");
    let d = sched
        .client()
        .await
        .describe_job(pb::DescribeJobRequest {
            name: "ticker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        d.events.iter().any(|e| e.kind() == pb::EventKind::Lost),
        "{:?}",
        d.events
    );

    // The first copy's last tick came before the second copy's first.
    let first = std::fs::read_to_string(
        dir.path()
            .join(&victim_machine)
            .join("tasks/ticker/0/1/stdout"),
    )
    .unwrap();
    let second = std::fs::read_to_string(
        dir.path()
            .join(&moved.machine)
            .join("tasks/ticker/0/2/stdout"),
    )
    .unwrap();
    let (a, b) = (stamps(&first, "tick "), stamps(&second, "tick "));
    assert!(!a.is_empty() && b.len() == 8, "first {a:?} second {b:?}");
    assert!(
        a.last().unwrap() < b.first().unwrap(),
        "the copies overlapped: {a:?} vs {b:?}"
    );
}

/// Kill -9 the local agent while tasks run and start it again: it reads its
/// placements back, the nodes re-register with what they run, and nothing
/// is started twice or lost. Then kill it once more and let the tasks
/// finish while it is down: the agent that comes back learns their exits
/// from the nodes, and the job succeeds without running anything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn kill_9_and_restart_a_local_agent_starts_nothing_twice() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let mut agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeAgent> = ["n1", "n2"]
        .iter()
        .map(|n| NodeAgent::start(&agent.url(), n, "2", "1Gi", dir.path().join(n)))
        .collect();
    wait_machines(&sched, 2).await;
    // The tasks run until the test lets them finish.
    let go = dir.path().join("go");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.1; done; echo done",
        go.display()
    );
    sched
        .client()
        .await
        .submit(job("steady", 4, "1", None, &script))
        .await
        .unwrap();
    eventually("all 4 running", Duration::from_secs(20), || async {
        let st = status(&sched, "steady").await?;
        (st.summary?.counts?.running == 4).then_some(())
    })
    .await;

    agent.kill9();
    agent.restart().await;
    // Both nodes register again with the four tasks they run.
    eventually(
        "the nodes registered again with their tasks",
        Duration::from_secs(20),
        || async {
            let m = agent.machines().await?;
            let up = m.iter().filter(|m| m.up).count();
            let tasks: usize = m.iter().map(|m| m.tasks.len()).sum();
            (up == 2 && tasks == 4).then_some(())
        },
    )
    .await;

    // Once more, and the tasks finish while the agent is down.
    agent.kill9();
    std::fs::write(&go, "").unwrap();
    eventually(
        "every task exited while the agent was down",
        Duration::from_secs(20),
        || async {
            (0..4)
                .all(|i| nodes.iter().any(|n| n.exited("steady", i, 1)))
                .then_some(())
        },
    )
    .await;
    agent.restart().await;
    let st = wait_state(
        &sched,
        "steady",
        pb::JobState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    for t in &st.tasks {
        assert_eq!(t.exit_code, Some(0));
        let attempts: Vec<u64> = nodes
            .iter()
            .flat_map(|n| n.attempts("steady", t.index))
            .collect();
        assert_eq!(attempts, [1], "task {} started once: {attempts:?}", t.index);
    }
}

/// A node agent killed and restarted within its lease finds its task still
/// running, adopts it, and reports its exit: the task is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_restarted_node_agent_adopts_its_running_tasks() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeAgent::start(&agent.url(), "n1", "2", "1Gi", dir.path().join("n1"));
    wait_machines(&sched, 1).await;
    sched
        .client()
        .await
        .submit(job("adopted", 1, "1", None, "sleep 2; echo finished"))
        .await
        .unwrap();
    eventually("the task running", Duration::from_secs(20), || async {
        let st = status(&sched, "adopted").await?;
        (st.summary?.counts?.running == 1).then_some(())
    })
    .await;
    node.kill9();
    node.restart();
    let st = wait_state(
        &sched,
        "adopted",
        pb::JobState::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(st.tasks[0].exit_code, Some(0));
    assert_eq!(node.attempts("adopted", 0), [1], "not run again");
    let out = std::fs::read_to_string(dir.path().join("n1/tasks/adopted/0/1/stdout")).unwrap();
    assert_eq!(out.trim(), "finished");
}

/// Cancelling a job stops its running tasks on their machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn cancel_stops_running_tasks() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start(&agent.url(), "n1", "4", "2Gi", dir.path().join("n1"));
    wait_machines(&sched, 1).await;
    sched
        .client()
        .await
        .submit(job("forever", 2, "1", None, "sleep 300"))
        .await
        .unwrap();
    eventually("both running", Duration::from_secs(20), || async {
        let st = status(&sched, "forever").await?;
        (st.summary?.counts?.running == 2).then_some(())
    })
    .await;
    let out = schedctl(&sched.url(), &["cancel", "forever"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SIGTERM: exit code 128 + 15, and the machine is free again.
    let st = eventually("both stopped", Duration::from_secs(20), || async {
        let st = status(&sched, "forever").await?;
        st.tasks
            .iter()
            .all(|t| t.exit_code == Some(143))
            .then_some(st)
    })
    .await;
    assert_eq!(st.summary.unwrap().state, pb::JobState::Cancelled as i32);
    eventually("the machine free", Duration::from_secs(10), || async {
        let m = machines(&sched).await;
        (m.len() == 1 && m[0].allocated.unwrap_or_default().cpu_millis == 0).then_some(())
    })
    .await;
}
