//! Two levels against one on a tight mixed workload (issue 15), in one run.
//! Run with `cargo bench -p sched-core --bench tight`.
//!
//! The workload (`tests/common/tight.rs`): cpu-heavy and memory-heavy jobs
//! asking 85% of the resource asked most, half with a preferred location.
//! Its size comes from `SCHED_TIGHT_CLUSTERS`, `_MACHINES`, `_TASKS`,
//! `_TIGHTNESS` (percent) and `_SEED`; by default the 100 clusters
//! × 100 machines of 64 cpu / 256Gi and 800,000 tasks. `SCHED_TIGHT_RUNS`
//! (default 3) repeats the two-level simulator; the best run is reported.
//!
//! Printed for the simulator (`simulate`, global ranking plus local
//! packing, deciding as the daemons do: each job split by what each
//! cluster's machines hold) and a flat Kubernetes MostAllocated over all
//! machines (timed
//! twice with the same decisions: scanning only the machines that can win,
//! and scoring every machine as kube-scheduler does, which takes minutes
//! at the full size; `SCHED_TIGHT_FLAT_EVERY=0` leaves that one out): tasks
//! placed, machines used, machines used / lower bound (the largest over
//! resources of ceil(total request / one machine's capacity)), and
//! placements per second of scheduling time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use sched_core::policy::{Policy, ScorerName, WeightedScorer};
use sched_core::simulate::{lower_bound_machines, simulate};

use common::flat::flat_most_allocated;
use common::tight::TightMixed;

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this
    // bench skips it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"tight".contains(a.as_str()))
    {
        return;
    }
    let params = TightMixed::from_env();
    let runs: u32 = std::env::var("SCHED_TIGHT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let (topology, jobs) = params.generate();
    let mut policy = Policy::default();
    // `SCHED_TIGHT_ALIGNMENT=W` adds the alignment scorer with weight W.
    if let Some(w) = std::env::var("SCHED_TIGHT_ALIGNMENT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        policy.global.scorers.push(WeightedScorer {
            name: ScorerName::Alignment,
            weight: w,
        });
        policy
            .validate()
            .expect("SCHED_TIGHT_ALIGNMENT: a weight in 1..=100");
    }
    let tasks: u64 = jobs.iter().map(|j| u64::from(j.spec.tasks)).sum();
    let bound = lower_bound_machines(&topology, &jobs).unwrap_or(0);
    println!(
        "tight mixed {} (seed {}): {} jobs, {tasks} tasks, lower bound {bound} machines; scorers {:?}",
        params.label(),
        params.seed,
        jobs.len(),
        policy
            .global
            .scorers
            .iter()
            .map(|s| (s.name.as_str(), s.weight))
            .collect::<Vec<_>>()
    );

    // The best of `runs` runs.
    let timed = || {
        let mut best: Option<f64> = None;
        let mut report = None;
        for _ in 0..runs {
            let started = Instant::now();
            let out = simulate(&topology, &jobs, &policy, None, &mut |_| {});
            let seconds = started.elapsed().as_secs_f64();
            best = Some(best.map_or(seconds, |b: f64| b.min(seconds)));
            report = Some(out.report(&topology, &jobs));
        }
        (
            report.expect("at least one run"),
            best.expect("at least one run"),
        )
    };
    let (two, two_s) = timed();
    let flat = flat_most_allocated(&topology, &jobs, false);
    // Scoring every machine for every task, as kube-scheduler does, takes
    // minutes at the full size: `SCHED_TIGHT_FLAT_EVERY=0` leaves it out.
    let every = (std::env::var("SCHED_TIGHT_FLAT_EVERY").as_deref() != Ok("0"))
        .then(|| flat_most_allocated(&topology, &jobs, true));
    if let Some(e) = &every {
        assert_eq!(
            (e.tasks_placed, e.machines_used),
            (flat.tasks_placed, flat.machines_used),
            "the two flat scans must decide alike"
        );
    }

    let ratio = |used: u64| used as f64 / bound.max(1) as f64;
    let rate = |placed: u64, s: f64| placed as f64 / s.max(1e-9);
    println!(
        "{:<22} {:>10} {:>10} {:>14} {:>10} {:>14}",
        "", "placed", "machines", "used/bound", "seconds", "placements/s"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>14.4} {:>10.3} {:>14.0}",
        "two-level simulate",
        two.tasks_placed,
        two.machines_used,
        ratio(two.machines_used),
        two_s,
        rate(two.tasks_placed, two_s)
    );
    println!(
        "{:<22} {:>10} {:>10} {:>14.4} {:>10.3} {:>14.0}",
        "flat, pruned scan",
        flat.tasks_placed,
        flat.machines_used,
        ratio(flat.machines_used),
        flat.seconds,
        rate(flat.tasks_placed, flat.seconds)
    );
    if let Some(e) = &every {
        println!(
            "{:<22} {:>10} {:>10} {:>14.4} {:>10.3} {:>14.0}",
            "flat, every machine",
            e.tasks_placed,
            e.machines_used,
            ratio(e.machines_used),
            e.seconds,
            rate(e.tasks_placed, e.seconds)
        );
    }
    println!(
        "tasks with a preferred location {}, placed there: two-level {}",
        two.tasks_with_locality, two.tasks_at_preferred_location
    );
    let two_rate = rate(two.tasks_placed, two_s);
    println!(
        "speed-up (placements/s, two-level / flat): {:.1}x against the pruned scan{}",
        two_rate / rate(flat.tasks_placed, flat.seconds),
        every.as_ref().map_or(String::new(), |e| format!(
            ", {:.1}x against every machine scored",
            two_rate / rate(e.tasks_placed, e.seconds)
        ))
    );
    println!(
        "two-level places at least as many tasks as flat: {}, no more machines: {}",
        two.tasks_placed >= flat.tasks_placed,
        two.machines_used <= flat.machines_used
    );
}
