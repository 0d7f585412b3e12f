//! Locality: when capacity allows, tasks with a preferred location land there.

use sched_core::job::load_workload;
use sched_core::policy::Policy;
use sched_core::simulate::simulate;
use sched_core::topology::Topology;

fn config(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Three locations of uneven size, jobs preferring each, and a load of about
/// half the total capacity, so every location has room for its own jobs but
/// the remote clusters look emptier for a while.
#[test]
fn at_least_95_percent_of_located_tasks_land_at_their_location() {
    let topology = Topology::from_yaml(
        r#"
locations: [{name: east}, {name: west}, {name: eu}]
links:
  - {from: east, to: west, latency_ms: 70}
  - {from: east, to: eu, latency_ms: 80}
clusters:
  - {name: east-a, location: east, machines: [{class: std, count: 200, cpu: 32, memory: 128Gi}]}
  - {name: east-b, location: east, machines: [{class: std, count: 100, cpu: 32, memory: 128Gi}]}
  - {name: west-a, location: west, machines: [{class: big, count: 100, cpu: 64, memory: 256Gi}]}
  - {name: eu-a, location: eu, machines: [{class: std, count: 100, cpu: 32, memory: 128Gi}]}
"#,
    )
    .unwrap();
    let mut jobs = String::from("jobs:\n");
    for i in 0..300 {
        let loc = ["east", "east", "west", "eu", "east"][i % 5];
        let cpu = [500, 1000, 1500, 2000][i % 4];
        let mem = [1, 2, 4, 3][i % 4];
        jobs.push_str(&format!(
            "  - {{name: job-{i}, tasks: {}, resources: {{cpu: {cpu}m, memory: {mem}Gi}}, locality: {loc}}}\n",
            10 + (i % 7) * 5
        ));
    }
    let jobs = load_workload(&jobs, &topology).unwrap();
    let policy = Policy::from_yaml(&config("config/policy.yaml")).unwrap();
    let out = simulate(&topology, &jobs, &policy, None, &mut |_| {});
    let r = out.report(&topology, &jobs);
    assert_eq!(r.tasks_unplaced, 0);
    let share = r.tasks_at_preferred_location as f64 / r.tasks_with_locality as f64;
    assert!(
        share >= 0.95,
        "only {:.1}% at the preferred location",
        share * 100.0
    );
}

#[test]
fn the_example_files_load() {
    let topology = Topology::from_yaml(&config("config/examples/topology.yaml")).unwrap();
    let jobs = load_workload(&config("config/examples/jobs.yaml"), &topology).unwrap();
    assert!(!jobs.is_empty());
    Policy::from_yaml(&config("config/policy.yaml")).unwrap();
}

/// When the preferred location is full, tasks spill to the nearest location
/// rather than stay unplaced.
#[test]
fn a_full_location_spills_to_the_nearest() {
    let topology = Topology::from_yaml(
        r#"
locations: [{name: east}, {name: west}, {name: eu}]
links:
  - {from: east, to: west, latency_ms: 70}
  - {from: east, to: eu, latency_ms: 20}
clusters:
  - {name: east-a, location: east, machines: [{class: std, count: 2, cpu: 4, memory: 16Gi}]}
  - {name: west-a, location: west, machines: [{class: std, count: 10, cpu: 4, memory: 16Gi}]}
  - {name: eu-a, location: eu, machines: [{class: std, count: 10, cpu: 4, memory: 16Gi}]}
"#,
    )
    .unwrap();
    let jobs = load_workload(
        "jobs:\n  - {name: big, tasks: 20, resources: {cpu: 1, memory: 1Gi}, locality: east}\n",
        &topology,
    )
    .unwrap();
    let out = simulate(&topology, &jobs, &Policy::default(), None, &mut |_| {});
    let r = out.report(&topology, &jobs);
    assert_eq!(r.tasks_placed, 20);
    assert_eq!(r.clusters[0].tasks_placed, 8); // east-a: 2 machines x 4 tasks
    assert_eq!(r.clusters[2].tasks_placed, 12); // eu-a is 20 ms away, west-a 70
}
