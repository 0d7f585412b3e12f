//! Benchmarks of the scheduling core. Run with `cargo bench -p sched-core`.
//!
//! - `simulate/100x100x800k`: the whole simulator (global ranking and local
//!   packing) on 100 clusters × 100 machines with 800,000 tasks in 8,000
//!   jobs; throughput is in placements per second.
//! - `simulate-baseline/...`: the same run with Kubernetes' MostAllocated or
//!   Nomad's binpack choosing the machine, one task at a time over every
//!   machine of the cluster, as those schedulers score.
//! - `rank/100-clusters`: ranking 100 clusters for one job.
//! - `pack/falkenauer-u1000`, `pack/perfect-2d-200`: packing quality
//!   instances, timed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sched_core::baseline::{pack_online, MostAllocated, NodeScorer, NomadBinPack};
use sched_core::cluster::ClusterSummary;
use sched_core::labels::Labels;
use sched_core::pack::pack;
use sched_core::policy::Policy;
use sched_core::rank::Ranker;
use sched_core::simulate::{simulate, simulate_with, Packer};

use common::*;

/// A baseline scorer as the simulator's local packer.
fn baseline_packer<'s>(scorer: &'s dyn NodeScorer) -> Box<Packer<'s>> {
    Box::new(move |cell, groups, _| pack_online(cell, groups, scorer))
}

fn simulator(c: &mut Criterion) {
    let topology = workload::topology(100, 100);
    let jobs = workload::jobs(8_000, 100, 1);
    let policy = Policy::default();
    let tasks: u64 = jobs.iter().map(|j| u64::from(j.spec.tasks)).sum();

    let mut g = c.benchmark_group("simulate");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(tasks));
    g.bench_function("100x100x800k", |b| {
        b.iter(|| {
            let out = simulate(&topology, &jobs, &policy, None, &mut |_| {});
            black_box(out.placements.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("simulate-baseline");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(tasks));
    let scorers: [&dyn NodeScorer; 2] = [&MostAllocated, &NomadBinPack];
    for scorer in scorers {
        g.bench_function(BenchmarkId::new(scorer.name(), "100x100x800k"), |b| {
            b.iter(|| {
                let mut packer = baseline_packer(scorer);
                let out = simulate_with(&topology, &jobs, &policy, None, &mut |_| {}, &mut *packer);
                black_box(out.placements.len())
            })
        });
    }
    g.finish();

    // Machines used, printed once for the README's table.
    let ours = simulate(&topology, &jobs, &policy, None, &mut |_| {}).report(&topology, &jobs);
    let mut line = format!(
        "machines used, 100x100x800k: core {} (placed {}/{}, lower bound {:?})",
        ours.machines_used, ours.tasks_placed, ours.tasks_total, ours.lower_bound_machines
    );
    for scorer in scorers {
        let mut packer = baseline_packer(scorer);
        let r = simulate_with(&topology, &jobs, &policy, None, &mut |_| {}, &mut *packer)
            .report(&topology, &jobs);
        line.push_str(&format!(", {} {}", scorer.name(), r.machines_used));
    }
    eprintln!("{line}");
}

fn ranking(c: &mut Criterion) {
    let topology = workload::topology(100, 100);
    let jobs = workload::jobs(100, 100, 2);
    let policy = Policy::default();
    let ranker = Ranker::new(&policy, &topology.locality);
    let summaries: Vec<ClusterSummary> = topology
        .clusters
        .iter()
        .map(ClusterSummary::from_cluster)
        .collect();
    let mut g = c.benchmark_group("rank");
    g.throughput(Throughput::Elements(jobs.len() as u64));
    g.bench_function("100-clusters", |b| {
        b.iter(|| {
            for j in &jobs {
                black_box(ranker.rank(j, &summaries, &[]).best());
            }
        })
    });
    g.finish();
}

fn packing(c: &mut Criterion) {
    let none = Labels::new();
    let policy = Policy::default();
    let mut g = c.benchmark_group("pack");
    g.sample_size(10);
    let items = falkenauer_u(1000, &mut Rng::new(7));
    g.throughput(Throughput::Elements(items.len() as u64));
    g.bench_function("falkenauer-u1000", |b| {
        b.iter(|| {
            let mut cell = uniform_cell(1000, falkenauer_machine());
            black_box(pack(&mut cell, &singletons(&items, &none), &policy.local).len())
        })
    });
    let items = perfect_2d(200, &mut Rng::new(8));
    g.throughput(Throughput::Elements(items.len() as u64));
    g.bench_function("perfect-2d-200", |b| {
        b.iter(|| {
            let mut cell = uniform_cell(items.len() as u32, perfect_machine());
            black_box(pack(&mut cell, &singletons(&items, &none), &policy.local).len())
        })
    });
    g.finish();
}

criterion_group!(benches, simulator, ranking, packing);
criterion_main!(benches);
