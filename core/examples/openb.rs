//! The experiment of Weng et al., "Beware of Fragmentation" (USENIX ATC
//! 2023) on the Alibaba openb default trace: tasks drawn with each seed
//! until the requested GPUs reach the capacity (inflate 1.0), no
//! departures; GPU allocation rate and unallocated GPUs per strategy, the
//! mean over seeds, every placement checked.
//!
//! `cargo run --release -p sched-core --example openb -- [SEEDS]` (default
//! 10; seeds 1..=SEEDS). The trace is read from `$OPENB_DIR` or
//! the repository's `data/alibaba-openb`.

#[path = "../tests/gpu_baselines/mod.rs"]
mod gpu_baselines;

use gpu_baselines::{experiment, load_openb, table};

fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("SEEDS: a whole number"))
        .unwrap_or(10);
    let o = load_openb();
    let started = std::time::Instant::now();
    let runs: Vec<_> = (1..=seeds)
        .map(|s| {
            let r = experiment(&o, s, 1.0);
            eprintln!(
                "seed {s}: {}",
                r.iter()
                    .map(|x| format!(
                        "{} {:.1}",
                        x.name,
                        (x.gpu_milli_total - x.gpu_milli_allocated) as f64 / 1000.0
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            r
        })
        .collect();
    println!(
        "openb default trace, inflate 1.0, {} GPUs, mean of {seeds} seeds ({:.1} s)",
        runs[0][0].gpu_milli_total / 1000,
        started.elapsed().as_secs_f64()
    );
    println!("| strategy | GPU allocation rate | unallocated GPUs |");
    println!("| --- | ---: | ---: |");
    for (name, rate, unalloc) in table(&runs) {
        println!("| {name} | {rate:.2}% | {unalloc:.1} |");
    }
}
