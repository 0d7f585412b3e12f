//! Failover of the global scheduler as a client sees it.
//!
//! ```sh
//! cargo build --release -p global-scheduler -p schedctl
//! cargo bench -p sched-tests --bench failover [-- RUNS]
//! ```
//!
//! Three replicas on one etcd, the default policy (leader lease TTL 3 s).
//! A thread runs the real `schedctl --server A,B,C submit -f FILE` in a
//! loop, one new one-task job per call. RUNS times (default 10): kill -9
//! whichever replica leads, then time
//! - until another replica reports itself leading (its
//!   `clustersched.v1.SchedulerService` health SERVING), and
//! - until the first submit acknowledged after the kill (the moment
//!   schedctl prints `job/... submitted`),
//!
//! then start the killed replica again as a standby and wait for the loop
//! to be acknowledged again before the next kill. Prints each run, and the
//! median and worst of both.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sched_tests::{eventually, EtcdServer, Scheduler};

const TOPOLOGY: &str = "config/examples/topology.yaml";

/// No replica can lead, hence acknowledge, before the killed leader's lease
/// expires (writes are fenced on its key): an acknowledgement read this
/// soon after the kill left the old leader before it died, and schedctl
/// was still printing it.
const FROM_THE_OLD_LEADER: Duration = Duration::from_millis(50);

/// What the submit loop saw.
#[derive(Default)]
struct Loop {
    /// When each acknowledgement was printed, in order.
    acks: Mutex<Vec<Instant>>,
    failed: AtomicUsize,
    stop: AtomicBool,
}

impl Loop {
    fn acks(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// The first acknowledgement after `t`.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.acks.lock().unwrap().iter().copied().find(|a| *a > t)
    }
}

/// `schedctl --server SERVERS submit` of one new job, over and over, until
/// `stop`.
fn submit_loop(servers: String, state: Arc<Loop>) {
    let dir = tempfile::tempdir().unwrap();
    let mut i = 0u64;
    while !state.stop.load(Ordering::Relaxed) {
        i += 1;
        let file = dir.path().join("job.yaml");
        std::fs::write(
            &file,
            format!(
                "jobs:\n  - name: fo-{i:06}\n    tasks: 1\n    \
                 resources: {{cpu: 100m, memory: 64Mi}}\n    command: [\"true\"]\n"
            ),
        )
        .unwrap();
        let mut child = sched_tests::schedctl_command()
            .args(["--server", &servers, "submit", "-f"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run schedctl");
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("submitted") {
                state.acks.lock().unwrap().push(Instant::now());
            }
        }
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            state.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "schedctl submit failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

async fn leader(replicas: &[Scheduler], but: Option<usize>) -> Option<usize> {
    for (i, r) in replicas.iter().enumerate() {
        if Some(i) != but && r.leads().await {
            return Some(i);
        }
    }
    None
}

fn median_and_worst(mut times: Vec<Duration>) -> (u128, u128) {
    times.sort();
    (
        times[times.len() / 2].as_millis(),
        times[times.len() - 1].as_millis(),
    )
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let etcd = EtcdServer::start().expect("start etcd (is etcd-server installed?)");
        let args = ["--topology", TOPOLOGY];
        let mut replicas = vec![Scheduler::start(&etcd.url(), &args).await];
        for _ in 0..2 {
            replicas.push(Scheduler::start_standby(&etcd.url(), &args).await);
        }
        let servers = replicas
            .iter()
            .map(Scheduler::url)
            .collect::<Vec<_>>()
            .join(",");
        let state = Arc::new(Loop::default());
        let submitter = {
            let (servers, state) = (servers.clone(), state.clone());
            std::thread::spawn(move || submit_loop(servers, state))
        };
        let (mut to_leader, mut to_ack) = (Vec::new(), Vec::new());
        for run in 0..runs {
            // The loop is being acknowledged (again).
            let seen = state.acks();
            eventually("submits acknowledged", Duration::from_secs(30), || async {
                (state.acks() >= seen + 3).then_some(())
            })
            .await;
            let leading = eventually("a leader", Duration::from_secs(30), || {
                leader(&replicas, None)
            })
            .await;
            let killed = Instant::now();
            replicas[leading].kill9();
            let new_leader = eventually("a new leader", Duration::from_secs(30), || async {
                leader(&replicas, Some(leading))
                    .await
                    .map(|_| killed.elapsed())
            })
            .await;
            let acked = eventually(
                "a submit acknowledged after the kill",
                Duration::from_secs(30),
                || async { state.first_after(killed + FROM_THE_OLD_LEADER) },
            )
            .await
                - killed;
            println!(
                "failover {}: new leader after {} ms, first submit acknowledged after {} ms",
                run + 1,
                new_leader.as_millis(),
                acked.as_millis()
            );
            to_leader.push(new_leader);
            to_ack.push(acked);
            replicas[leading].spawn();
            sched_tests::wait_serving(&replicas[leading].url(), Duration::from_secs(30)).await;
        }
        state.stop.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || submitter.join().unwrap())
            .await
            .unwrap();
        let (lm, lw) = median_and_worst(to_leader);
        let (am, aw) = median_and_worst(to_ack);
        println!(
            "failover over {runs} kills: to the new leader median {lm} ms, worst {lw} ms; \
             to the first acknowledged submit median {am} ms, worst {aw} ms"
        );
        println!(
            "submits: {} acknowledged, {} failed",
            state.acks(),
            state.failed.load(Ordering::Relaxed)
        );
    });
}
