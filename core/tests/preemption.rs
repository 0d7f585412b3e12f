//! Preemption in the simulator (issue 13): work that arrives later at a
//! higher priority evicts lower-priority work, as few tasks as it can.
//!
//! The minimum is computed here by exhaustive search on small cases: every
//! way of putting the production tasks on the machines, and on each machine
//! the smallest set of batch tasks whose eviction makes room for what was
//! put there, given where the batch tasks were placed before production
//! arrived.

mod common;

use common::Rng;
use sched_core::job::Job;
use sched_core::policy::Policy;
use sched_core::resources::Resources;
use sched_core::simulate::{simulate, simulate_arrivals};
use sched_core::topology::Topology;

const BATCH: u32 = 2000;
const PRODUCTION: u32 = 7000;

fn topology(machines: u32, cpu: u32, memory_gi: u32) -> Topology {
    Topology::from_yaml(&format!(
        "locations: [{{name: here}}]\n\
         clusters:\n  - name: c0\n    location: here\n    machines:\n      \
         - {{class: m, count: {machines}, cpu: \"{cpu}\", memory: \"{memory_gi}Gi\"}}\n"
    ))
    .unwrap()
}

fn job(id: u32, tasks: u32, cpu_millis: u64, memory_mi: u64, priority: u32) -> Job {
    let request = Resources::new(cpu_millis, memory_mi << 20);
    let mut j = common::job(id, format!("j{id}"), tasks, request);
    j.spec.priority = priority;
    j
}

#[test]
fn production_arriving_at_a_full_cell_evicts_only_what_it_needs() {
    // 4 machines of 4 cpu, full of 16 one-cpu batch tasks; 2 production
    // tasks of 2 cpu arrive later: 4 batch tasks must go (4 cpu), no more.
    let topo = topology(4, 4, 16);
    let jobs = [
        job(0, 16, 1000, 1024, BATCH),
        job(1, 2, 2000, 1024, PRODUCTION),
    ];
    let out = simulate_arrivals(
        &topo,
        &jobs,
        &[0, 10_000],
        &Policy::default(),
        None,
        &mut |_| {},
    );
    assert_eq!(out.placements[1].len(), 2);
    assert_eq!(out.preemptions, 4);
    // The evicted batch tasks found no room again: they wait.
    assert_eq!(out.placements[0].len(), 12);
    assert_eq!(out.unplaced.len(), 1);
    assert_eq!(out.unplaced[0].tasks, 4);
    for c in &out.cells {
        c.check_invariants().unwrap();
    }

    // Arriving together, production is placed first and nothing is evicted.
    let out = simulate(&topo, &jobs, &Policy::default(), None, &mut |_| {});
    assert_eq!((out.placements[1].len(), out.preemptions), (2, 0));
}

#[test]
fn a_second_production_job_does_not_evict_the_first() {
    // 2 machines of 4 cpu: production (2 x 4 cpu) fills them, then batch
    // and a second production job arrive: nothing is evicted.
    let topo = topology(2, 4, 16);
    let jobs = [
        job(0, 2, 4000, 1024, PRODUCTION),
        job(1, 1, 4000, 1024, PRODUCTION),
        job(2, 1, 1000, 1024, BATCH),
    ];
    let out = simulate_arrivals(
        &topo,
        &jobs,
        &[0, 1000, 1000],
        &Policy::default(),
        None,
        &mut |_| {},
    );
    assert_eq!(out.preemptions, 0);
    assert_eq!(out.placements[0].len(), 2);
    assert!(out.placements[1].is_empty() && out.placements[2].is_empty());
}

/// The fewest batch tasks to evict so that every production request fits,
/// by exhaustive search: `batch[m]` are the batch requests left on machine
/// `m` before production arrives, `prod` the production requests.
fn minimum_evictions(
    capacity: Resources,
    batch: &[Vec<Resources>],
    prod: &[Resources],
) -> Option<u32> {
    let machines = batch.len();
    // On one machine: the fewest batch tasks to remove so that `load` fits.
    let fewest_on = |m: usize, load: Resources| -> Option<u32> {
        let tasks = &batch[m];
        let mut best: Option<u32> = None;
        for mask in 0u32..(1 << tasks.len()) {
            let kept = tasks
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) == 0)
                .fold(Resources::ZERO, |acc, (_, r)| acc.saturating_add(r));
            if load.saturating_add(&kept).fits_in(&capacity) {
                let n = mask.count_ones();
                best = Some(best.map_or(n, |b| b.min(n)));
            }
        }
        best
    };
    let mut best: Option<u32> = None;
    let mut choice = vec![0usize; prod.len()];
    loop {
        let mut loads = vec![Resources::ZERO; machines];
        for (p, &m) in prod.iter().zip(&choice) {
            loads[m] = loads[m].saturating_add(p);
        }
        let total: Option<u32> = (0..machines).map(|m| fewest_on(m, loads[m])).sum();
        if let Some(t) = total {
            best = Some(best.map_or(t, |b| b.min(t)));
        }
        // The next assignment of production tasks to machines.
        let mut i = 0;
        loop {
            if i == choice.len() {
                return best;
            }
            choice[i] += 1;
            if choice[i] < machines {
                break;
            }
            choice[i] = 0;
            i += 1;
        }
    }
}

#[test]
fn over_filled_by_30_percent_every_production_task_runs_with_near_minimal_evictions() {
    // 3 machines of 4 cpu / 8 GiB. Batch arrives first and asks for 100% of
    // the cpu in mixed shapes; production arrives later and asks for 30%,
    // also mixed: 130% in all. Over 100 seeds, every production task must
    // run, and the evictions must be within 10% of the exhaustive minimum.
    let capacity = Resources::new(4000, 8 << 30);
    let topo = topology(3, 4, 8);
    let policy = Policy::default();
    let (mut ours, mut least) = (0u64, 0u64);
    let mut cases = 0;
    for seed in 0..100u64 {
        let mut rng = Rng::new(seed);
        let mut jobs = Vec::new();
        // Batch: one-task jobs until 12 cpu are asked for.
        let mut asked = 0;
        while asked < 12_000 {
            let cpu = 500 * rng.range(1, 4);
            let mem = 512 * rng.range(1, 6);
            jobs.push(job(jobs.len() as u32, 1, cpu, mem, BATCH));
            asked += cpu;
        }
        let batch_jobs = jobs.len();
        // Production: 3.6 cpu (30% of 12) in tasks of 0.5-1.5 cpu.
        let mut asked = 0;
        while asked < 3600 {
            let cpu = (500 * rng.range(1, 3)).min(3600 - asked).max(100);
            let mem = 512 * rng.range(1, 4);
            jobs.push(job(jobs.len() as u32, 1, cpu, mem, PRODUCTION));
            asked += cpu;
        }
        let arrivals: Vec<u64> = (0..jobs.len())
            .map(|i| if i < batch_jobs { 0 } else { 60_000 })
            .collect();
        // Where batch was before production came: the same run without it.
        let before = simulate(&topo, &jobs[..batch_jobs], &policy, None, &mut |_| {});
        let mut on: Vec<Vec<Resources>> = vec![Vec::new(); 3];
        for (j, places) in before.placements.iter().enumerate() {
            for l in places {
                on[l.machine.0 as usize].push(jobs[j].spec.request);
            }
        }
        let prod: Vec<Resources> = jobs[batch_jobs..].iter().map(|j| j.spec.request).collect();
        let Some(minimum) = minimum_evictions(capacity, &on, &prod) else {
            continue;
        };
        let out = simulate_arrivals(&topo, &jobs, &arrivals, &policy, None, &mut |_| {});
        for c in &out.cells {
            c.check_invariants().unwrap();
        }
        let placed_prod: usize = out.placements[batch_jobs..].iter().map(Vec::len).sum();
        assert_eq!(
            placed_prod,
            prod.len(),
            "seed {seed}: every production task runs"
        );
        ours += out.preemptions;
        least += u64::from(minimum);
        cases += 1;
    }
    // Seen: 100 cases, 236 evictions against a minimum of 219 (7.8% above;
    // 706 against 657 over 300 seeds, 7.5%).
    println!("{cases} cases: {ours} evictions, exhaustive minimum {least}");
    assert!(cases >= 30, "only {cases} feasible cases");
    assert!(
        ours * 10 <= least * 11,
        "{ours} evictions over {cases} cases; the minimum is {least} (more than 10% above)"
    );
}
