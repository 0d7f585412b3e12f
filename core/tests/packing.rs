//! Packing quality: against lower bounds, known optima and the Kubernetes
//! and Nomad baselines, on seeded instances.

mod common;

use common::*;
use sched_core::baseline::{pack_online, MostAllocated, NodeScorer, NomadBinPack};
use sched_core::labels::Labels;
use sched_core::pack::pack;
use sched_core::policy::LocalPolicy;
use sched_core::resources::Resources;

fn ours(items: &[Resources], machine: Resources) -> u64 {
    let none = Labels::new();
    let mut cell = uniform_cell(items.len() as u32, machine);
    let out = pack(
        &mut cell,
        &singletons(items, &none),
        &LocalPolicy::default(),
    );
    assert!(out.iter().all(|o| o.unplaced == 0));
    cell.check_invariants().unwrap();
    cell.machines_used() as u64
}

fn baseline(items: &[Resources], machine: Resources, scorer: &dyn NodeScorer) -> u64 {
    let none = Labels::new();
    let mut cell = uniform_cell(items.len() as u32, machine);
    let out = pack_online(&mut cell, &singletons(items, &none), scorer);
    assert!(out.iter().all(|o| o.unplaced == 0));
    cell.machines_used() as u64
}

#[test]
fn falkenauer_uniform_within_two_percent_of_the_lower_bound() {
    let mut rng = Rng::new(2);
    let mut gaps = Vec::new();
    for n in [120, 250, 500, 1000] {
        for _ in 0..5 {
            let items = falkenauer_u(n, &mut rng);
            let bound = falkenauer_bound(&items);
            let used = ours(&items, falkenauer_machine());
            let kube = baseline(&items, falkenauer_machine(), &MostAllocated);
            let nomad = baseline(&items, falkenauer_machine(), &NomadBinPack);
            assert!(
                used <= kube && used <= nomad,
                "n={n}: ours {used}, kube {kube}, nomad {nomad}"
            );
            gaps.push((used - bound) as f64 / bound as f64);
        }
    }
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    println!(
        "falkenauer u: mean gap to the lower bound {:.2}%",
        mean * 100.0
    );
    assert!(mean <= 0.02, "mean gap {:.2}%", mean * 100.0);
}

#[test]
fn perfect_two_resource_instances_within_three_percent_of_the_optimum() {
    let mut rng = Rng::new(3);
    let mut gaps = Vec::new();
    for machines in [50, 100, 200] {
        for _ in 0..4 {
            let items = perfect_2d(machines, &mut rng);
            let used = ours(&items, perfect_machine());
            let kube = baseline(&items, perfect_machine(), &MostAllocated);
            let nomad = baseline(&items, perfect_machine(), &NomadBinPack);
            assert!(
                used <= kube && used <= nomad,
                "{machines}: ours {used}, kube {kube}, nomad {nomad}"
            );
            gaps.push((used as f64 - machines as f64) / machines as f64);
        }
    }
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    println!("perfect 2d: mean gap to the optimum {:.2}%", mean * 100.0);
    assert!(mean <= 0.03, "mean gap {:.2}%", mean * 100.0);
}
