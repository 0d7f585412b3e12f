//! Failover times of the global scheduler.
//!
//! ```sh
//! cargo build --release && cargo bench -p sched-tests --bench failover [-- RUNS]
//! ```
//!
//! Three replicas on one etcd (lease TTL from the default policy, 3 s).
//! RUNS times (default 10): kill -9 the leader, time until another replica
//! reports itself leading (its `sched.v1.Scheduler` health SERVING), then
//! start the killed one again as a standby. Prints each time, the median
//! and the worst.

use std::time::{Duration, Instant};

use sched_tests::{EtcdServer, Scheduler};

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
        let mut replicas = vec![Scheduler::start(&etcd.url(), &[]).await];
        for _ in 0..2 {
            replicas.push(Scheduler::start_standby(&etcd.url(), &[]).await);
        }
        let mut times = Vec::new();
        for run in 0..runs {
            let mut leader = None;
            for (i, r) in replicas.iter().enumerate() {
                if r.leads().await {
                    leader = Some(i);
                }
            }
            let leader = leader.expect("one replica leads");
            replicas[leader].kill9();
            let killed = Instant::now();
            let took = loop {
                let mut led = false;
                for (i, r) in replicas.iter().enumerate() {
                    if i != leader && r.leads().await {
                        led = true;
                    }
                }
                if led {
                    break killed.elapsed();
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "no new leader after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            println!("failover {}: {} ms", run + 1, took.as_millis());
            times.push(took);
            replicas[leader].spawn();
            // Let it come up as a standby before the next kill.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        times.sort();
        println!(
            "failover over {runs} runs: median {} ms, worst {} ms",
            times[times.len() / 2].as_millis(),
            times[times.len() - 1].as_millis()
        );
    });
}
