//! Chaos: while jobs stream in, kill -9 and restart random components
//! (global scheduler replicas, local agents, node agents) and restart etcd
//! once; then check the invariants from etcd and from the node agents'
//! task directories.
//!
//! Seeded: `CHAOS_SEED=N cargo test -p sched-tests --test chaos -- --nocapture`
//! replays a run's actions (the seed is printed at the start; timing still
//! varies). About 80 s. With `SCHED_TEST_LOGS=DIR` every process's log is
//! kept in `DIR/<process>.log`; when a job does not finish, the test prints
//! the leader's view of it (task states, pending reasons, events).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sched_proto::pb;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_store::EtcdStore;
use sched_tests::{leader_channel, start_etcd, LocalAgent, NodeAgent, Scheduler};

const TOPOLOGY: &str = "config/examples/topology.yaml";
/// Each node declares 2 cpu; each task asks for 1.
const NODE_CPU: usize = 2;

/// splitmix64: small, seedable, good enough to pick victims.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn job(i: usize) -> pb::SubmitRequest {
    let name = format!("chaos-{i:03}");
    pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![pb::JobSpec {
            name: name.clone(),
            tasks: 3,
            resources: Some(pb::ResourceRequest {
                cpu: "1".into(),
                memory: "64Mi".into(),
                disk: None,
                gpu: None,
            }),
            priority: None,
            locality: Some(
                if i.is_multiple_of(2) {
                    "us-east"
                } else {
                    "us-west"
                }
                .into(),
            ),
            constraints: Default::default(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo start $(date +%s.%N); sleep 1; echo end $(date +%s.%N)".into(),
            ],
            // Killed agents lose tasks again and again: every attempt
            // must be allowed, and soon.
            restart: Some(pb::RestartPolicy {
                policy: "on-failure".into(),
                max_attempts: Some(1000),
                backoff: Some(sched_proto::wkt::duration(200)),
            }),
            ttl_after_finished: None,
            tenant: None,
            band: None,
        }],
        submission_id: name,
    }
}

/// Calls `f` until it succeeds; only an unavailable leader or a full queue
/// is worth retrying (anything else fails the test).
async fn retry<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    loop {
        match f().await {
            Ok(()) => return,
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::Unknown
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Aborted
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

fn mtime(p: &Path) -> Option<f64> {
    let t = std::fs::metadata(p).ok()?.modified().ok()?;
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// One run of one task: where, and from when to when.
#[derive(Debug, Clone)]
struct Run {
    machine: String,
    start: f64,
    end: f64,
}

/// Every run found in the nodes' task directories, by task.
fn runs(root: &Path) -> BTreeMap<(String, u32), Vec<Run>> {
    let mut out: BTreeMap<(String, u32), Vec<Run>> = BTreeMap::new();
    for node in std::fs::read_dir(root).unwrap().flatten() {
        let machine = node.file_name().to_string_lossy().to_string();
        let Ok(jobs) = std::fs::read_dir(node.path().join("tasks")) else {
            continue;
        };
        for job in jobs.flatten() {
            let name = job.file_name().to_string_lossy().to_string();
            for index in std::fs::read_dir(job.path()).unwrap().flatten() {
                let i: u32 = index.file_name().to_string_lossy().parse().unwrap();
                for attempt in std::fs::read_dir(index.path()).unwrap().flatten() {
                    let a: u64 = attempt.file_name().to_string_lossy().parse().unwrap();
                    let dir = attempt.path();
                    let stdout = std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
                    let stamp = |tag: &str| {
                        stdout
                            .lines()
                            .find_map(|l| l.strip_prefix(tag))
                            .and_then(|t| t.trim().parse::<f64>().ok())
                    };
                    let Some(start) = stamp("start ") else {
                        continue;
                    };
                    // A task killed before it printed its end: it ended when
                    // its supervisor wrote the exit code; still running: now.
                    let end = stamp("end ")
                        .or_else(|| mtime(&dir.join("exit")))
                        .unwrap_or_else(|| {
                            SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .unwrap()
                                .as_secs_f64()
                        });
                    out.entry((name.clone(), i)).or_default().push(Run {
                        machine: format!("{machine} (attempt {a})"),
                        start,
                        end,
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn chaos_keeps_every_invariant() {
    let mut etcd = start_etcd();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("chaos seed {seed} (replay with CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let args = [
        "--topology",
        TOPOLOGY,
        "--heartbeat-interval-ms",
        "300",
        "--heartbeat-timeout-ms",
        "3000",
    ];
    let mut replicas = vec![Scheduler::start(&etcd.url(), &args).await];
    for _ in 0..2 {
        replicas.push(Scheduler::start_standby(&etcd.url(), &args).await);
    }
    let all: Vec<String> = replicas.iter().map(Scheduler::url).collect();
    let all = all.join(",");
    let mut agents = [
        LocalAgent::start("east-a", "us-east", &all, &etcd.url()).await,
        LocalAgent::start("west-a", "us-west", &all, &etcd.url()).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeAgent> = Vec::new();
    for (a, agent) in agents.iter().enumerate() {
        for n in 0..3 {
            let name = format!("a{a}n{n}");
            nodes.push(NodeAgent::start(
                &agent.url(),
                &name,
                &NODE_CPU.to_string(),
                "1Gi",
                dir.path().join(&name),
            ));
        }
    }

    const JOBS: usize = 40;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    // Jobs cancelled while they run, through the chaos; deleted at the end.
    let cancelled: Arc<Mutex<Vec<String>>> = Arc::default();
    let submitter = {
        let acked = acked.clone();
        let cancelled = cancelled.clone();
        let mut c = SchedulerServiceClient::new(leader_channel(&all));
        tokio::spawn(async move {
            for i in 0..JOBS {
                let req = job(i);
                loop {
                    match c.submit(req.clone()).await {
                        Ok(_) => break,
                        Err(s) => {
                            assert_ne!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                acked.lock().unwrap().push(req.jobs[0].name.clone());
                if i % 8 == 3 {
                    let name = format!("victim-{i:03}");
                    let mut v = req.clone();
                    v.submission_id = name.clone();
                    v.jobs[0].name = name.clone();
                    v.jobs[0].command = vec!["sleep".into(), "30".into()];
                    retry(|| {
                        let mut c = c.clone();
                        let v = v.clone();
                        async move { c.submit(v).await.map(|_| ()) }
                    })
                    .await;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    retry(|| {
                        let mut c = c.clone();
                        let name = name.clone();
                        async move {
                            c.cancel_job(pb::CancelJobRequest { name })
                                .await
                                .map(|_| ())
                        }
                    })
                    .await;
                    cancelled.lock().unwrap().push(name);
                } else {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
            }
        })
    };

    // About 70 s of chaos: an event every 2-5 s; etcd goes down once.
    let start = Instant::now();
    let mut etcd_done = false;
    while start.elapsed() < Duration::from_secs(70) {
        tokio::time::sleep(Duration::from_millis(2000 + rng.below(3000))).await;
        if !etcd_done && start.elapsed() > Duration::from_secs(30) {
            println!(
                "chaos {:>5.1}s: etcd down for 3 s",
                start.elapsed().as_secs_f64()
            );
            etcd.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            etcd.restart().unwrap();
            etcd_done = true;
            continue;
        }
        match rng.below(3) {
            0 => {
                let i = rng.below(replicas.len() as u64) as usize;
                println!(
                    "chaos {:>5.1}s: kill -9 global replica {i}",
                    start.elapsed().as_secs_f64()
                );
                replicas[i].kill9();
                tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
                replicas[i].spawn();
            }
            1 => {
                let i = rng.below(agents.len() as u64) as usize;
                println!(
                    "chaos {:>5.1}s: kill -9 local agent {i}",
                    start.elapsed().as_secs_f64()
                );
                agents[i].kill9();
                tokio::time::sleep(Duration::from_millis(200 + rng.below(1500))).await;
                agents[i].restart().await;
            }
            _ => {
                let i = rng.below(nodes.len() as u64) as usize;
                let down = 200 + rng.below(4000);
                println!(
                    "chaos {:>5.1}s: kill -9 node {} for {down} ms",
                    start.elapsed().as_secs_f64(),
                    nodes[i].name
                );
                nodes[i].kill9();
                tokio::time::sleep(Duration::from_millis(down)).await;
                nodes[i].restart();
            }
        }
    }
    submitter.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), JOBS);

    // Every task of every job reaches a final state, and succeeds.
    let mut c = SchedulerServiceClient::new(leader_channel(&all));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = match sched_tests::list_all_jobs!(c) {
            Ok(r) => r.into_inner().jobs,
            Err(_) => Vec::new(),
        };
        let (victims, jobs): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .partition(|j| j.name.starts_with("victim-"));
        if jobs.len() == JOBS
            && jobs
                .iter()
                .all(|j| j.state == pb::JobState::Succeeded as i32)
            && victims.iter().all(|j| {
                j.state == pb::JobState::Cancelled as i32
                    && j.counts.is_some_and(|c| c.cancelled == j.tasks)
            })
        {
            break;
        }
        if Instant::now() > deadline {
            // Ask the leader itself: a balanced channel may land on a standby.
            let mut jobs = jobs;
            for (i, r) in replicas.iter().enumerate() {
                if r.leads().await {
                    println!("replica {i} leads");
                    c = SchedulerServiceClient::new(leader_channel(&r.url()));
                    if let Ok(r) = sched_tests::list_all_jobs!(c) {
                        jobs = r.into_inner().jobs;
                    }
                }
            }
            println!(
                "{} jobs listed, {} succeeded",
                jobs.len(),
                jobs.iter()
                    .filter(|j| j.state == pb::JobState::Succeeded as i32)
                    .count()
            );
            for j in jobs
                .iter()
                .filter(|j| j.state != pb::JobState::Succeeded as i32)
            {
                let d = c
                    .describe_job(pb::DescribeJobRequest {
                        name: j.name.clone(),
                    })
                    .await
                    .map(|r| r.into_inner());
                if let Ok(d) = d {
                    let tasks: Vec<String> = d
                        .status
                        .unwrap_or_default()
                        .tasks
                        .iter()
                        .map(|t| format!("{}:{}@{}/{}", t.index, t.state, t.cluster, t.machine))
                        .collect();
                    println!("stuck {}: {tasks:?} {:?}", j.name, d.pending_reasons);
                    for e in d.events {
                        println!("    {} {}", e.kind().name(), e.message);
                    }
                }
            }
            panic!("not every job succeeded within 120 s (seed {seed})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Cancelled jobs: every task ended cancelled (none both cancelled and
    // running: every attempt of theirs has exited on its node); a finished
    // job deletes without --force, and leaves no key.
    let cancelled = cancelled.lock().unwrap().clone();
    assert!(!cancelled.is_empty());
    for name in &cancelled {
        for n in &nodes {
            for index in 0..3 {
                for a in n.attempts(name, index) {
                    let stopped = n.exited(name, index, a)
                        || n.work_dir
                            .join(format!("tasks/{name}/{index}/{a}/lost"))
                            .exists();
                    assert!(
                        stopped,
                        "{name}/{index} attempt {a} on {} still runs",
                        n.name
                    );
                }
            }
        }
        retry(|| {
            let mut c = c.clone();
            let name = name.clone();
            async move {
                match c
                    .delete_job(pb::DeleteJobRequest { name, force: false })
                    .await
                {
                    // A retry after an answer lost on the way.
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                    r => r.map(|_| ()),
                }
            }
        })
        .await;
    }

    // Every acknowledged job is in etcd, once; nothing was deleted that was
    // not finished and asked for.
    let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
    let keys: BTreeSet<String> = sched_tests::job_keys(&store).await.into_iter().collect();
    for name in &acked {
        assert!(keys.contains(&format!("/sched/jobs/{name}")), "{name} lost");
    }
    assert_eq!(keys.len(), JOBS);

    // From the nodes: no task ran on two machines at once, and no machine
    // ran more 1-cpu tasks at once than its 2 cpu.
    let runs = runs(dir.path());
    let mut per_machine: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for ((job, index), rs) in &runs {
        for (i, a) in rs.iter().enumerate() {
            for b in &rs[i + 1..] {
                let overlap = a.start.max(b.start) < a.end.min(b.end);
                assert!(!overlap, "{job}/{index} ran twice at once: {a:?} and {b:?}");
            }
            let machine = a.machine.split(' ').next().unwrap_or_default().to_string();
            per_machine
                .entry(machine)
                .or_default()
                .push((a.start, a.end));
        }
    }
    for (machine, spans) in &per_machine {
        for &(s, _) in spans {
            let at_once = spans.iter().filter(|&&(a, b)| a <= s && s < b).count();
            assert!(at_once <= NODE_CPU, "{machine} ran {at_once} tasks at once");
        }
    }
    let total_runs: usize = runs.values().map(Vec::len).sum();
    println!(
        "chaos: {JOBS} jobs, {} tasks, {total_runs} runs, all invariants hold",
        runs.len()
    );
    assert_eq!(runs.len(), JOBS * 3, "every task ran");
}
