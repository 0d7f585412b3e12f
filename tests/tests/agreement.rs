//! The simulator predicts the live scheduler: one workload file submitted in
//! one call to an idle live stack (real etcd, the real global scheduler, a
//! real local agent per cluster, hollow node agents with the topology's
//! machines, tasks that keep running) lands on the same clusters as
//! `schedctl simulate --placements` puts it, on the same topology, workload
//! and policy: at least 95% of tasks agree (same cluster, or unplaced in
//! both), at ~70% of capacity and over-filled by ~10% (spills, hand-backs,
//! unplaced tasks).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sched_proto::pb;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_security::Kind;
use sched_tests::*;
use tonic::transport::Channel;

/// The local agents' `--machine-timeout-ms` in tests (`LocalAgent::start`).
const MACHINE_TIMEOUT: Duration = Duration::from_millis(2000);

/// Clusters: (name, location, classes of (count, cpu, memory GiB, ssd)).
type ClusterShape = (&'static str, &'static str, &'static [(u32, u32, u32, bool)]);

const CLUSTERS: [ClusterShape; 4] = [
    (
        "east-a",
        "us-east",
        &[(30, 16, 64, false), (6, 32, 256, true)],
    ),
    ("east-b", "us-east", &[(24, 16, 64, false)]),
    ("west-a", "us-west", &[(20, 32, 128, true)]),
    ("eu-a", "eu-west", &[(20, 16, 128, false)]),
];

/// Machines per class are multiplied by `SCHED_AGREEMENT_SCALE` (default
/// 1; the README's larger figures use 5), and the workload with them.
fn scale() -> u32 {
    std::env::var("SCHED_AGREEMENT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn topology_yaml() -> String {
    let mut s = String::from(
        "locations: [{name: us-east}, {name: us-west}, {name: eu-west}]\n\
         links:\n\
         \x20 - {from: us-east, to: us-west, latency_ms: 70}\n\
         \x20 - {from: us-east, to: eu-west, latency_ms: 80}\n\
         \x20 - {from: us-west, to: eu-west, latency_ms: 140}\n\
         clusters:\n",
    );
    for (name, location, classes) in CLUSTERS {
        let _ = writeln!(
            s,
            "  - name: {name}\n    location: {location}\n    machines:"
        );
        for (i, (count, cpu, mem, ssd)) in classes.iter().enumerate() {
            let labels = if *ssd {
                ", labels: {ssd: \"true\"}"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "      - {{class: c{i}, count: {}, cpu: \"{cpu}\", memory: \"{mem}Gi\"{labels}}}",
                count * scale()
            );
        }
    }
    s
}

fn capacity_millis() -> u64 {
    CLUSTERS
        .iter()
        .flat_map(|c| c.2.iter())
        .map(|(n, cpu, _, _)| u64::from(n * scale()) * u64::from(*cpu) * 1000)
        .sum()
}

/// A small deterministic generator (xorshift), so every run submits the
/// same workload.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Jobs of mixed shapes (cpu-heavy and memory-heavy), priorities and
/// preferred locations, asking for about `load` (percent) of the cpu.
fn workload_yaml(load: u64, seed: u64) -> (String, u64) {
    let mut rng = Rng(seed);
    let want = capacity_millis() * load / 100;
    let mut cpu = 0;
    let mut tasks = 0u64;
    let mut s = String::from("jobs:\n");
    let locations = ["us-east", "us-west", "eu-west"];
    let mut i = 0;
    while cpu < want {
        let n = 5 + rng.below(40);
        let millis = [250, 500, 1000, 1500, 2000, 4000][rng.below(6) as usize];
        let mem_mi = if rng.below(3) == 0 {
            millis * 8 // memory-heavy: 8 GiB a core
        } else {
            millis * 2
        };
        let _ = write!(
            s,
            "  - {{name: job-{i}, tasks: {n}, resources: {{cpu: \"{millis}m\", memory: \"{mem_mi}Mi\"}}, \
             priority: {}, command: [sleep, \"3600\"]",
            [0, 100, 200][rng.below(3) as usize]
        );
        if rng.below(2) == 0 {
            let _ = write!(s, ", locality: {}", locations[rng.below(3) as usize]);
        }
        if rng.below(8) == 0 {
            let _ = write!(s, ", constraints: {{ssd: \"true\"}}");
        }
        s.push_str("}\n");
        cpu += n * millis;
        tasks += n;
        i += 1;
    }
    (s, tasks)
}

/// Per job, per cluster ("" for unplaced): tasks.
type Counts = BTreeMap<String, BTreeMap<String, u64>>;

/// `schedctl simulate --placements` on the files.
fn simulated(dir: &Path, tasks_per_job: &BTreeMap<String, u64>) -> Counts {
    let csv = dir.join("placements.csv");
    let out = Command::new(bin("schedctl"))
        .arg("simulate")
        .arg("--topology")
        .arg(dir.join("topology.yaml"))
        .arg("--workload")
        .arg(dir.join("jobs.yaml"))
        .arg("--placements")
        .arg(&csv)
        .output()
        .expect("run schedctl simulate");
    assert!(
        out.status.success(),
        "schedctl simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = Counts::new();
    for line in std::fs::read_to_string(&csv).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        *counts
            .entry(f[0].to_string())
            .or_default()
            .entry(f[2].to_string())
            .or_default() += 1;
    }
    for (job, &n) in tasks_per_job {
        let c = counts.entry(job.clone()).or_default();
        let placed: u64 = c.values().sum();
        c.insert(String::new(), n - placed);
    }
    counts
}

/// Tasks that agree (same cluster, or unplaced in both), of all.
fn agreement(live: &Counts, sim: &Counts) -> (u64, u64) {
    let mut agree = 0;
    let mut total = 0;
    for (job, s) in sim {
        total += s.values().sum::<u64>();
        let Some(l) = live.get(job) else { continue };
        for (cluster, n) in s {
            agree += (*n).min(l.get(cluster).copied().unwrap_or(0));
        }
    }
    (agree, total)
}

/// Heartbeats (1 s apart) that must pass without a change for the live
/// placements to count as settled.
const QUIET: Duration = Duration::from_millis(2500);

/// The live placements once nothing is assigned and not yet placed and
/// every pending task is one no cluster can take.
async fn settled(client: &SchedulerServiceClient<Channel>, tasks: u64) -> Counts {
    eventually(
        "the live placements to settle",
        Duration::from_secs(120),
        || {
            let mut client = client.clone();
            async move {
                let list = sched_tests::list_all_jobs!(client).ok()?.into_inner().jobs;
                let mut counts = Counts::new();
                let mut seen = 0;
                for j in list {
                    let c = j.counts.unwrap_or_default();
                    if c.assigned > 0 || c.lost > 0 || c.failed > 0 || c.succeeded > 0 {
                        return None;
                    }
                    if c.pending > 0 {
                        let d = client
                            .describe_job(pb::DescribeJobRequest {
                                name: j.name.clone(),
                            })
                            .await
                            .ok()?
                            .into_inner();
                        if d.pending_reasons.iter().any(|r| {
                            r.contains("about to be assigned") || r.contains("being assigned")
                        }) {
                            return None;
                        }
                    }
                    let status = client
                        .get_job(pb::GetJobRequest {
                            name: j.name.clone(),
                            view: pb::JobView::Full as i32,
                        })
                        .await
                        .ok()?
                        .into_inner();
                    let per = counts.entry(j.name.clone()).or_default();
                    for t in status.tasks {
                        *per.entry(t.cluster.clone()).or_default() += 1;
                        seen += 1;
                    }
                }
                (seen == tasks).then_some(counts)
            }
        },
    )
    .await
}

async fn run(load: u64) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topology.yaml"), topology_yaml()).unwrap();
    let (jobs, tasks) = workload_yaml(load, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(dir.path().join("jobs.yaml"), &jobs).unwrap();
    let topology = dir.path().join("topology.yaml");

    let etcd = start_etcd();
    let scheduler =
        Scheduler::start(&etcd.url(), &["--topology", topology.to_str().unwrap()]).await;
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    let mut machines = 0;
    let mut last_agent_up = tokio::time::Instant::now();
    for (name, location, classes) in CLUSTERS {
        let agent = LocalAgent::start(name, location, &scheduler.url(), &etcd.url()).await;
        // The agent serves by now, so its start-up grace began before this.
        last_agent_up = tokio::time::Instant::now();
        for (i, (count, cpu, mem, ssd)) in classes.iter().enumerate() {
            let mut cmd = Command::new(bin("local-agent"));
            cmd.args(["node", "--agent", &agent.url(), "--name"])
                .arg(format!("{name}-c{i}"))
                .args(["--cpu", &cpu.to_string(), "--memory", &format!("{mem}Gi")])
                .args(["--hollow", &(count * scale()).to_string()])
                .args(["--hollow-duration-ms", "3600000", "--lease-ms", "1000"])
                .arg("--work-dir")
                .arg(dir.path().join(format!("{name}-c{i}")));
            if *ssd {
                cmd.args(["--labels", "ssd=true"]);
            }
            cmd.args(tls_flags(Kind::Node, &format!("{name}-c{i}")));
            let label = format!("node-{name}-c{i}");
            nodes.push(Guarded::spawn_named(cmd, &label).expect("start a hollow node agent"));
            machines += count * scale();
        }
        agents.push(agent);
    }
    // Every cluster's machines heard, and each agent past its start-up
    // grace (its machine timeout, 2 s in tests), in which it keeps what it
    // cannot place instead of handing it back as the simulator does.
    scheduler
        .wait_machines_up(machines, Duration::from_secs(60))
        .await;
    tokio::time::sleep_until(last_agent_up + MACHINE_TIMEOUT).await;

    let mut client = scheduler.client().await;
    client
        .submit(pb::SubmitRequest {
            yaml: jobs.clone(),
            ..Default::default()
        })
        .await
        .expect("submit the workload in one call");

    // Settled: nothing assigned and not yet placed, every pending task one
    // no cluster can take, and no change over a few heartbeats (a
    // heartbeat reporting room the scheduler did not count on, where a
    // cluster packed tighter than it assumed, makes it look at every
    // waiting job again, as the simulator does after each cluster packs).
    let mut live = settled(&client, tasks).await;
    loop {
        tokio::time::sleep(QUIET).await;
        let again = settled(&client, tasks).await;
        if again == live {
            break;
        }
        live = again;
    }

    let tasks_per_job: BTreeMap<String, u64> = live
        .iter()
        .map(|(j, c)| (j.clone(), c.values().sum()))
        .collect();
    let sim = simulated(dir.path(), &tasks_per_job);
    let (agree, total) = agreement(&live, &sim);
    let unplaced =
        |c: &Counts| -> u64 { c.values().map(|m| m.get("").copied().unwrap_or(0)).sum() };
    println!(
        "load {load}%: {agree} of {total} tasks agree ({:.1}%); unplaced live {}, simulated {}",
        100.0 * agree as f64 / total as f64,
        unplaced(&live),
        unplaced(&sim)
    );
    // The jobs that differ most, to see why when the figure drops.
    let mut diffs: Vec<(u64, &String)> = sim
        .iter()
        .map(|(job, s)| {
            let agree: u64 = s
                .iter()
                .map(|(c, n)| (*n).min(live.get(job).and_then(|l| l.get(c)).copied().unwrap_or(0)))
                .sum();
            (s.values().sum::<u64>() - agree, job)
        })
        .filter(|d| d.0 > 0)
        .collect();
    diffs.sort_by(|a, b| b.cmp(a));
    for (n, job) in diffs.iter().take(8) {
        println!(
            "  {job}: {n} differ; live {:?}, simulated {:?}",
            live.get(*job),
            sim[*job]
        );
        if let Ok(d) = client
            .describe_job(pb::DescribeJobRequest {
                name: job.to_string(),
            })
            .await
        {
            let d = d.into_inner();
            let states: BTreeMap<i32, usize> =
                d.status
                    .iter()
                    .flat_map(|s| s.tasks.iter())
                    .fold(BTreeMap::new(), |mut m, t| {
                        *m.entry(t.state).or_default() += 1;
                        m
                    });
            println!("    task states: {states:?}");
            for r in d.pending_reasons {
                println!("    why: {r}");
            }
            for e in d.events {
                println!("    event: {} {}", e.kind().name(), e.message);
            }
        }
    }
    drop(nodes);
    drop(agents);
    (agree, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn the_simulator_predicts_the_live_scheduler_at_70_percent_load() {
    let (agree, total) = run(70).await;
    assert!(
        agree * 100 >= total * 95,
        "only {agree} of {total} tasks agree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn the_simulator_predicts_the_live_scheduler_when_overfilled() {
    let (agree, total) = run(110).await;
    assert!(
        agree * 100 >= total * 95,
        "only {agree} of {total} tasks agree"
    );
}
