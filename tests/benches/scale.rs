//! The scale run: the real services with hollow machines.
//!
//! ```sh
//! cargo build --release && cargo bench -p sched-tests --bench scale [-- CLUSTERS MACHINES JOBS]
//! ```
//!
//! Starts etcd, the global scheduler, one local agent per cluster and one
//! node agent per cluster hosting MACHINES hollow machines (32 cpu, 128 GiB
//! each; their tasks pretend to run for 10 minutes), waits until every
//! machine is up, then submits JOBS jobs of 100 tasks (1 cpu, 2 GiB), ten
//! jobs per call from 16 concurrent callers, and measures the time until
//! the global scheduler reports every task placed on a machine. Prints
//! tasks placed per second end to end and each process's peak memory.
//! Defaults: 10 clusters x 1,000 machines, 1,000 jobs (100,000 tasks).
//! Target (issue 4): all placed in under 60 s on a 2-core machine.

use std::process::Command;
use std::time::{Duration, Instant};

use sched_proto::pb;
use sched_proto::pb::scheduler_client::SchedulerClient;
use sched_tests::{bin, channel, free_port, memory, EtcdServer, Guarded, LocalAgent, Scheduler};

const TASKS_PER_JOB: i64 = 100;

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clusters = args.first().copied().unwrap_or(10) as usize;
    let machines = args.get(1).copied().unwrap_or(1000) as usize;
    let jobs = args.get(2).copied().unwrap_or(1000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(clusters, machines, jobs));
}

async fn run(clusters: usize, machines: usize, jobs: usize) {
    let etcd = EtcdServer::start().expect("start etcd (is etcd-server installed?)");
    let sched = Scheduler::start(&etcd.url(), &[]).await;
    let mut agents = Vec::new();
    for i in 0..clusters {
        agents.push(
            LocalAgent::start(
                &format!("c{i}"),
                &format!("loc{}", i % 3),
                &sched.url(),
                &etcd.url(),
            )
            .await,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let mut cmd = Command::new(bin("local-agent"));
        cmd.args(["node", "--agent", &a.url(), "--name", &format!("c{i}-h")])
            .args([
                "--hollow",
                &machines.to_string(),
                "--cpu",
                "32",
                "--memory",
                "128Gi",
            ])
            .args([
                "--hollow-duration-ms",
                "600000",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .arg("--work-dir")
            .arg(dir.path().join(format!("c{i}")));
        nodes.push(Guarded::spawn(cmd).expect("start a hollow node"));
    }
    let mut client = SchedulerClient::new(channel(&sched.url()));
    let want = (clusters * machines) as u32;
    let start = Instant::now();
    loop {
        let up = sched.machines_up().await;
        if up == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{up}/{want} machines up after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "scale: {clusters} clusters x {machines} hollow machines up in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let total = jobs as u64 * TASKS_PER_JOB as u64;
    let start = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let locations = clusters.min(3);
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let mut c = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
                    if first >= jobs {
                        return;
                    }
                    let specs = (first..(first + 10).min(jobs))
                        .map(|i| pb::JobSpec {
                            name: format!("job-{i}"),
                            tasks: TASKS_PER_JOB,
                            resources: Some(pb::ResourceRequest {
                                cpu: "1".into(),
                                memory: "2Gi".into(),
                                disk: None,
                                gpu: None,
                            }),
                            priority: None,
                            locality: Some(format!("loc{}", i % locations)),
                            constraints: Default::default(),
                            command: vec!["sleep".into(), "600".into()],
                            ..Default::default()
                        })
                        .collect();
                    let req = pb::SubmitRequest {
                        yaml: String::new(),
                        jobs: specs,
                        submission_id: format!("s{first}"),
                    };
                    loop {
                        match c.submit(req.clone()).await {
                            Ok(_) => break,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            Err(s) => panic!("submit: {s:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    let submitted = start.elapsed();
    let mut last = 0;
    loop {
        let list = client
            .list_jobs(pb::ListJobsRequest { state: 0 })
            .await
            .unwrap()
            .into_inner()
            .jobs;
        let placed: u64 = list
            .iter()
            .filter_map(|j| j.counts)
            .map(|c| u64::from(c.placed + c.running + c.succeeded + c.failed))
            .sum();
        if placed >= total {
            break;
        }
        if placed != last {
            last = placed;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{placed}/{total} tasks placed after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = start.elapsed();
    println!(
        "scale: {total} tasks in {jobs} jobs: submitted in {:.1} s, all placed on machines in {:.1} s = {:.0} tasks/s end to end",
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    let mut rows: Vec<(String, Option<u32>)> = vec![
        ("etcd".into(), etcd.pid()),
        ("global-scheduler".into(), sched.pid()),
    ];
    for (i, a) in agents.iter().enumerate() {
        rows.push((format!("local-agent c{i}"), a.pid()));
    }
    for (i, n) in nodes.iter().enumerate() {
        rows.push((format!("node c{i} ({machines} hollow)"), n.program_pid()));
    }
    println!("scale: memory (peak / now, MiB):");
    for (name, pid) in rows {
        match pid.and_then(memory) {
            Some((peak, now)) => println!("  {name:<28} {:>8.1} / {:>8.1}", mib(peak), mib(now)),
            None => println!("  {name:<28} (gone)"),
        }
    }
}
