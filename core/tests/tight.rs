//! Two levels against one on small tight mixed workloads
//! (`common/tight.rs`): the simulator places every task that a flat
//! Kubernetes MostAllocated over all machines places, on no more machines
//! (deciding as the daemons do, with and without the alignment scorer);
//! and, since jobs are split by what machines hold, a job no machine can
//! hold is refused by the global level without being handed to any
//! cluster. The full-size comparison is the `tight` benchmark.

mod common;

use sched_core::job::{Job, JobId};
use sched_core::policy::{Policy, ScorerName, WeightedScorer};
use sched_core::resources::Resources;
use sched_core::simulate::{lower_bound_machines, simulate};
use sched_core::topology::Topology;

use common::flat::flat_most_allocated;
use common::tight::TightMixed;

fn with_alignment(weight: i64) -> Policy {
    let mut p = Policy::default();
    p.global.scorers.push(WeightedScorer {
        name: ScorerName::Alignment,
        weight,
    });
    p.validate().unwrap();
    p
}

#[test]
fn two_levels_place_what_flat_places_on_no_more_machines() {
    for (tightness_pct, seed) in [(85, 1), (85, 2), (90, 3), (90, 4)] {
        let params = TightMixed {
            clusters: 5,
            machines: 40,
            tasks: 13_000,
            tightness_pct,
            seed,
        };
        let (topology, jobs) = params.generate();
        // Deterministic: the same parameters give the same workload.
        let (_, again) = params.generate();
        assert_eq!(
            jobs.iter()
                .map(|j| (j.spec.tasks, j.spec.request, j.locality))
                .collect::<Vec<_>>(),
            again
                .iter()
                .map(|j| (j.spec.tasks, j.spec.request, j.locality))
                .collect::<Vec<_>>()
        );
        let flat = flat_most_allocated(&topology, &jobs, false);
        let bound = lower_bound_machines(&topology, &jobs).unwrap();
        let runs = [
            ("default", Policy::default()),
            ("alignment 4", with_alignment(4)),
        ];
        for (name, policy) in runs {
            let out = simulate(&topology, &jobs, &policy, None, &mut |_| {});
            let two = out.report(&topology, &jobs);
            eprintln!(
                "{} {name}: two-level {} placed on {} machines, flat {} on {} (lower bound {bound})",
                params.label(),
                two.tasks_placed,
                two.machines_used,
                flat.tasks_placed,
                flat.machines_used
            );
            assert!(
                two.tasks_placed >= flat.tasks_placed,
                "{} {name}: two-level placed {}, flat {}",
                params.label(),
                two.tasks_placed,
                flat.tasks_placed
            );
            assert!(
                two.machines_used <= flat.machines_used,
                "{} {name}: two-level used {} machines, flat {}",
                params.label(),
                two.machines_used,
                flat.machines_used
            );
        }
    }
}

fn job(id: u32, tasks: u32, cpu_millis: u64) -> Job {
    common::job(
        id,
        format!("j{id}"),
        tasks,
        Resources::new(cpu_millis, 1 << 30),
    )
}

#[test]
fn a_job_no_machine_holds_is_refused_without_a_hand_back() {
    // Two clusters of four 4-cpu machines. Eight 3-cpu tasks leave 1 cpu on
    // every machine: 4 cpu unclaimed per cluster, summed, but no machine
    // holds a 2-cpu task. The 1-cpu tasks fit in the slivers.
    let topology = Topology::from_yaml(
        "locations: [{name: here}]\n\
         clusters:\n\
         \x20 - {name: c0, location: here, machines: [{class: m, count: 4, cpu: \"4\", memory: 64Gi}]}\n\
         \x20 - {name: c1, location: here, machines: [{class: m, count: 4, cpu: \"4\", memory: 64Gi}]}\n",
    )
    .unwrap();
    let jobs = [job(0, 8, 3000), job(1, 1, 2000), job(2, 8, 1000)];
    let out = simulate(&topology, &jobs, &Policy::default(), None, &mut |_| {});
    assert_eq!(out.placements[0].len(), 8);
    assert_eq!(out.placements[2].len(), 8);
    assert_eq!(out.unplaced.len(), 1);
    let u = &out.unplaced[0];
    assert_eq!((u.job, u.tasks), (JobId(1), 1));
    assert_eq!(
        u.reason, "0/2 clusters can take it: 2 no machine with room for it",
        "refused by the global level, never handed to a cluster"
    );
}
