//! GPUs as devices on the Alibaba openb trace: the experiment of Weng et
//! al., "Beware of Fragmentation" (USENIX ATC 2023), with a checker for
//! every GPU placement. Ten seeds: `cargo run --release -p sched-core
//! --example openb -- 10`.

mod gpu_baselines;

use gpu_baselines::{experiment, load_openb, table};

#[test]
fn openb_default_trace_inflated_to_capacity() {
    let o = load_openb();
    assert_eq!(o.machines.names.len(), 1523);
    let capacity = o.machines.topology.clusters[0].capacity().gpu.0;
    assert_eq!(capacity, 6_212_000);
    let runs: Vec<_> = [1u64, 2].iter().map(|&s| experiment(&o, s, 1.0)).collect();
    for r in runs.iter().flatten() {
        // Arrived GPU requests reach the capacity, and nothing is placed
        // beyond it.
        assert!(r.gpu_milli_arrived >= capacity, "{r:?}");
        assert!(r.gpu_milli_allocated <= capacity, "{r:?}");
    }
    println!(
        "{:<24} {:>12} {:>16}",
        "STRATEGY", "GPU ALLOC %", "UNALLOCATED GPUS"
    );
    let rows = table(&runs);
    for (name, rate, unalloc) in &rows {
        println!("{name:<24} {rate:>11.2}% {unalloc:>16.1}");
    }
    let unalloc = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().2;
    // The fragmentation strategy leaves fewer GPUs unallocated than the
    // paper's FGD and every classic baseline.
    let ours = unalloc("ours: fragmentation");
    for other in [
        "fgd-paper",
        "best-fit",
        "dot-product",
        "gpu-packing",
        "random-fit",
    ] {
        assert!(
            ours < unalloc(other),
            "ours {ours} vs {other} {}",
            unalloc(other)
        );
    }
}

#[test]
fn replay_with_real_times_keeps_devices_consistent() {
    use sched_core::gpu::strategy::{PolicyPlacer, TaskPlacer};
    use sched_core::policy::{LocalPolicy, Strategy};
    use sched_core::replay::replay;
    let o = load_openb();
    let local = LocalPolicy {
        strategy: Strategy::Fragmentation,
        ..LocalPolicy::default()
    };
    let mut p: Vec<Box<dyn TaskPlacer>> =
        vec![Box::new(PolicyPlacer::new("f", &local, o.mix.clone()))];
    let out = replay(&o.machines.topology, &o.pods, &mut p, &o.mix);
    out.cells[0].check_invariants().unwrap();
    // At the end every task with a departure has left: what still runs
    // is what ran and never departs.
    let last = out.samples.last().unwrap();
    let stays = o
        .pods
        .iter()
        .zip(&out.placements)
        .filter(|(t, p)| t.departure_ms.is_none() && p.is_some())
        .count() as u64;
    assert_eq!(last.tasks_running, stays);
    let peak = out.samples.iter().map(|s| s.allocated.gpu.0).max().unwrap();
    assert!(peak > 0 && peak <= out.capacity.gpu.0);
    for s in &out.samples {
        assert!(s.gpu_milli_fragmented <= s.gpu_milli_unallocated, "{s:?}");
    }
}

/// Issue 16: two 0.4-GPU holes on different devices do not make room for
/// a 0.6 share, under every strategy; whole GPUs need whole free devices.
#[test]
fn test_reproduce_16_a_share_never_spans_devices() {
    use sched_core::cell::Cell;
    use sched_core::cluster::{Cluster, ClusterId};
    use sched_core::job::JobId;
    use sched_core::labels::Labels;
    use sched_core::locality::LocationId;
    use sched_core::machine::{MachineClass, MachineId};
    use sched_core::pack::{pack, TaskGroup};
    use sched_core::policy::{LocalPolicy, Strategy};
    use sched_core::resources::Resources;

    for strategy in [Strategy::BestFit, Strategy::Spread, Strategy::Fragmentation] {
        let mut cell = Cell::new(&Cluster {
            id: ClusterId(0),
            name: "c".into(),
            location: LocationId(0),
            classes: vec![MachineClass {
                name: "g".into(),
                count: 1,
                capacity: Resources::new(64_000, 1 << 36).with_gpu(2000),
                labels: Labels::new(),
            }],
        });
        let none = Labels::new();
        let group = |gpu, count| TaskGroup {
            job: JobId(0),
            request: Resources::new(1000, 1 << 20).with_gpu(gpu),
            constraints: &none,
            priority: 0,
            count,
        };
        let policy = LocalPolicy {
            strategy,
            ..LocalPolicy::default()
        };
        let out = pack(&mut cell, &[group(600, 3)], &policy);
        // 2000 milli are free in all, but 0.6 fits each device only once.
        assert_eq!(
            out[0].placed,
            vec![MachineId(0), MachineId(0)],
            "{strategy:?}"
        );
        assert_eq!(out[0].unplaced, 1, "{strategy:?}");
        let devices: Vec<u32> = out[0].gpus.iter().map(|s| s[0].device).collect();
        assert_eq!(devices.len(), 2);
        assert_ne!(devices[0], devices[1], "{strategy:?}");
        assert_eq!(cell.machine(MachineId(0)).gpus, vec![400, 400]);
        // A whole GPU does not fit in two 0.4 holes either.
        let out = pack(&mut cell, &[group(1000, 1)], &policy);
        assert_eq!(out[0].unplaced, 1, "{strategy:?}");
        cell.check_invariants().unwrap();
    }
}

/// The batch simulator (global ranking, then packing) reports each GPU
/// task's devices too.
#[test]
fn batch_simulation_names_the_devices() {
    use sched_core::job::load_workload;
    use sched_core::policy::Policy;
    use sched_core::simulate::simulate;
    use sched_core::topology::Topology;
    let topo = Topology::from_yaml(
        "locations: [{name: l}]\nclusters:\n  - name: c\n    location: l\n    machines:\n      - {class: g, count: 2, cpu: 16, memory: 64Gi, gpu: 2}\n",
    )
    .unwrap();
    let jobs = load_workload(
        "jobs:\n  - {name: two, tasks: 1, resources: {cpu: 1, memory: 1Gi, gpu: 2}}\n  - {name: share, tasks: 5, resources: {cpu: 1, memory: 1Gi, gpu: 0.3}}\n  - {name: cpu, tasks: 1, resources: {cpu: 1, memory: 1Gi}}\n",
        &topo,
    )
    .unwrap();
    let out = simulate(&topo, &jobs, &Policy::default(), None, &mut |_| {});
    assert!(out.unplaced.is_empty());
    assert_eq!(out.gpus[0][&0].len(), 2, "two whole devices");
    assert_eq!(out.gpus[1].len(), 5);
    for slots in out.gpus[1].values() {
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].milli, 300);
    }
    assert!(out.gpus[2].is_empty());
    out.cells[0].check_invariants().unwrap();
}
