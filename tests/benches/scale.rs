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
//!
//! The run is made twice, each on a fresh etcd and stack: in plaintext,
//! then with mutual TLS on every hop and a token (every process with a
//! certificate of its own from a throwaway CA, the global scheduler with
//! a `--tokens` file, the callers with a user certificate sending
//! `authorization: Bearer`), and the summary gives the ratio of the two
//! end-to-end rates. `SCHED_BENCH_SECURITY=plaintext` (or `mtls`) makes
//! one run only; the default is both.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sched_proto::pb;
use sched_security::{Kind, Role, Tls};
use sched_tests::pki::Pki;
use sched_tests::{
    bin, cpu_time, etcd_writes, free_port, memory, user_client, EtcdServer, Guarded, LocalAgent,
    Scheduler, UserClient,
};

const TASKS_PER_JOB: u32 = 100;

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// How the processes talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plaintext,
    /// Mutual TLS on every hop, and a bearer token on the job API.
    MutualTls,
}

impl Mode {
    /// The modes `SCHED_BENCH_SECURITY` asks for (`plaintext`, `mtls`;
    /// unset or `both`: both, plaintext first).
    fn from_env() -> Vec<Mode> {
        match std::env::var("SCHED_BENCH_SECURITY").as_deref() {
            Err(_) | Ok("both") => vec![Mode::Plaintext, Mode::MutualTls],
            Ok("plaintext") => vec![Mode::Plaintext],
            Ok("mtls") => vec![Mode::MutualTls],
            Ok(other) => panic!("SCHED_BENCH_SECURITY={other}: plaintext, mtls or both"),
        }
    }

    /// How its lines start.
    fn label(self) -> &'static str {
        match self {
            Mode::Plaintext => "scale",
            Mode::MutualTls => "scale, mTLS and a token",
        }
    }
}

/// What one run measured.
struct Figures {
    up: Duration,
    placed: Duration,
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
    let mut figures = Vec::new();
    for mode in Mode::from_env() {
        figures.push(rt.block_on(run(clusters, machines, jobs, mode)));
    }
    if let [plain, mtls] = &figures[..] {
        let total = (jobs as u64 * TASKS_PER_JOB as u64) as f64;
        let (p, m) = (
            total / plain.placed.as_secs_f64(),
            total / mtls.placed.as_secs_f64(),
        );
        println!(
            "scale: mTLS and a token / plaintext: {m:.0} / {p:.0} tasks/s end to end = {:.2}; machines up in {:.1} s / {:.1} s",
            m / p,
            mtls.up.as_secs_f64(),
            plain.up.as_secs_f64(),
        );
    }
}

async fn run(clusters: usize, machines: usize, jobs: usize, mode: Mode) -> Figures {
    let label = mode.label();
    let etcd = EtcdServer::start().expect("start etcd (is etcd-server installed?)");
    // With mTLS: a CA, a certificate for every process, a user's
    // certificate and token for the callers.
    let pki = (mode == Mode::MutualTls).then(Pki::new);
    let flags = |kind: Kind, name: &str| -> Vec<String> {
        pki.as_ref().map_or_else(Vec::new, |p| p.flags(kind, name))
    };
    let user: Option<(Tls, String, PathBuf)> = pki.as_ref().map(|p| {
        let (token, tokens_file) = p.token("bench", "default", Role::Submitter);
        (p.tls(Kind::User, "bench"), token, tokens_file)
    });
    let user_tls = user.as_ref().map(|(tls, _, _)| tls);
    let token = user.as_ref().map(|(_, token, _)| token.as_str());
    let sched = match &user {
        Some((tls, _, tokens_file)) => {
            let mut extra = flags(Kind::Scheduler, "scheduler");
            extra.extend(["--tokens".to_string(), tokens_file.display().to_string()]);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            Scheduler::start_tls(&etcd.url(), &extra, tls.clone()).await
        }
        None => Scheduler::start(&etcd.url(), &[]).await,
    };
    let mut agents = Vec::new();
    for i in 0..clusters {
        let extra = flags(Kind::Cluster, &format!("c{i}"));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        agents.push(
            LocalAgent::start_tls(
                &format!("c{i}"),
                &format!("loc{}", i % 3),
                &sched.url(),
                &etcd.url(),
                &extra,
                user_tls.cloned(),
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
            .arg(dir.path().join(format!("c{i}")))
            .args(flags(Kind::Node, &format!("c{i}-h")));
        nodes.push(Guarded::spawn(cmd).expect("start a hollow node"));
    }
    let mut client = user_client(&sched.url(), user_tls, token);
    let want = (clusters * machines) as u32;
    let start = Instant::now();
    loop {
        let up = machines_up(&mut client).await;
        if up == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{up}/{want} machines up after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let up = start.elapsed();
    println!(
        "{label}: {clusters} clusters x {machines} hollow machines up in {:.1} s",
        up.as_secs_f64()
    );

    let total = jobs as u64 * TASKS_PER_JOB as u64;
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
    let cpu_of = |rows: &[(String, Option<u32>)]| -> Vec<Option<Duration>> {
        rows.iter().map(|(_, pid)| pid.and_then(cpu_time)).collect()
    };
    let bench_pid = std::process::id();
    let cpu_before = cpu_of(&rows);
    let bench_cpu_before = cpu_time(bench_pid);
    let writes_before = etcd_writes(&etcd.url()).await;
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
    // SCHED_BENCH_PROGRESS=1: a line at each poll, to see where the time goes.
    let progress = std::env::var_os("SCHED_BENCH_PROGRESS").is_some();
    loop {
        let polled = Instant::now();
        let list = sched_tests::list_all_jobs!(client)
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
        if progress {
            println!(
                "{label}: {:>6.2} s {placed:>7} placed (listed in {:.2} s)",
                start.elapsed().as_secs_f64(),
                polled.elapsed().as_secs_f64()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{placed}/{total} tasks placed after 600 s"
        );
        // A listing takes about 10 ms; polling every 250 ms put up to a
        // tenth of a 2.5 s run on the clock after the last placement.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu_of(&rows);
    let bench_cpu_after = cpu_time(bench_pid);
    println!(
        "{label}: {total} tasks in {jobs} jobs: submitted in {:.1} s, all placed on machines in {:.1} s = {:.0} tasks/s end to end",
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    // What etcd wrote for them (the hollow tasks run on, so this is the
    // happy path up to `running`: the task key assigned and the placement
    // key placed; running is not written, and a success adds the task
    // key's final state and the placement's delete: see tests/tests/writes.rs).
    match (writes_before, etcd_writes(&etcd.url()).await) {
        (Some(before), Some(after)) => {
            let w = after - before;
            let t = total as f64;
            println!(
                "{label}: etcd writes per task placed: {:.2} keys put, {:.2} deleted, in {:.3} transactions",
                w.puts / t,
                w.deletes / t,
                w.txns / t
            );
        }
        _ => println!("{label}: etcd's write counts could not be read from its /metrics"),
    }
    // Where the machine's cores went from the first submit to the last
    // task placed: each process's CPU seconds, summed by kind.
    let mut by_kind: Vec<(&str, f64)> = Vec::new();
    for (((name, _), before), after) in rows.iter().zip(&cpu_before).zip(&cpu_after) {
        let kind = name.split(' ').next().unwrap_or(name);
        let secs = match (before, after) {
            (Some(b), Some(a)) => a.saturating_sub(*b).as_secs_f64(),
            _ => continue,
        };
        match by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, s)) => *s += secs,
            None => by_kind.push((kind, secs)),
        }
    }
    if let (Some(b), Some(a)) = (bench_cpu_before, bench_cpu_after) {
        by_kind.push(("bench (callers)", a.saturating_sub(b).as_secs_f64()));
    }
    let wall = elapsed.as_secs_f64();
    let used: f64 = by_kind.iter().map(|(_, s)| s).sum();
    println!(
        "{label}: CPU seconds while placing ({wall:.1} s wall, {used:.1} s CPU = {:.2} cores busy):",
        used / wall
    );
    for (kind, secs) in &by_kind {
        println!(
            "  {kind:<28} {secs:>7.1} s  {:>5.1}%",
            100.0 * secs / used.max(f64::EPSILON)
        );
    }
    println!("{label}: memory (peak / now, MiB):");
    for (name, pid) in rows {
        match pid.and_then(memory) {
            Some((peak, now)) => println!("  {name:<28} {:>8.1} / {:>8.1}", mib(peak), mib(now)),
            None => println!("  {name:<28} (gone)"),
        }
    }
    Figures {
        up,
        placed: elapsed,
    }
}

/// Machines in the clusters that are up, as the scheduler sees them (0 if
/// the call fails).
async fn machines_up(client: &mut UserClient) -> u32 {
    client
        .list_clusters(pb::ListClustersRequest {})
        .await
        .map(|r| {
            r.into_inner()
                .clusters
                .iter()
                .filter(|c| c.up)
                .map(|c| c.machines)
                .sum()
        })
        .unwrap_or(0)
}
