//! Policy tuning without restarts (issue 14, part 7), with real etcd and the
//! real scheduler: two clusters where the locality weight decides; the
//! weights changed by SIGHUP after rewriting the `--policy` file and by
//! `schedctl policy apply`, each seen in where the next job goes; bad
//! policies (by SIGHUP and by apply) change nothing; `policy show` prints
//! the policy in force.

use std::path::Path;
use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, schedctl_command, start_etcd, ClusterSpec, Scheduler, TestCluster};

/// `east` is the jobs' preferred location, 70 ms from `west`.
const TOPOLOGY: &str = "\
locations: [{name: east}, {name: west}]
links: [{from: east, to: west, latency_ms: 70}]
clusters:
  - {name: east-1, location: east, machines: [{class: std, count: 1, cpu: \"32\", memory: 128Gi}]}
  - {name: west-1, location: west, machines: [{class: std, count: 10, cpu: \"32\", memory: 128Gi}]}
";

/// Locality decides: the job's location wins while it has room.
const LOCAL: &str =
    "global: {scorers: [{name: locality, weight: 100}, {name: headroom, weight: 1}]}\n";
/// Headroom decides: the emptier cluster wins. With east 8 of 32 cores
/// used: east 1 * 1000 + 100 * 750 = 76,000, west 1 * 125 + 100 * 1000 =
/// 100,125 (locality at 70 ms with half_at 10 is 1000 * 10 / 80 = 125).
const ROOMY: &str =
    "global: {scorers: [{name: locality, weight: 1}, {name: headroom, weight: 100}]}\n";
/// A weight out of range: refused, naming the field.
const BAD: &str = "global: {scorers: [{name: locality, weight: 0}]}\n";

fn job(name: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        submission_id: name.to_string(),
        jobs: vec![pb::JobSpec {
            name: name.to_string(),
            tasks: 1,
            resources: Some(pb::ResourceRequest {
                cpu: "8".into(),
                memory: "1Gi".into(),
                disk: None,
                gpu: None,
            }),
            locality: Some("east".into()),
            command: vec!["true".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Submits `name` and returns the cluster its task went to.
async fn cluster_of(sched: &Scheduler, name: &str) -> String {
    sched.client().await.submit(job(name)).await.unwrap();
    eventually(
        &format!("{name} assigned"),
        Duration::from_secs(20),
        || async {
            let j = sched.job(name).await?;
            let c = j.tasks.first()?.cluster.clone();
            (!c.is_empty()).then_some(c)
        },
    )
    .await
}

/// Waits until the scheduler sees `cpu_millis` allocated in `cluster`, so
/// the next decision's headroom counts the last job.
async fn wait_allocated(sched: &Scheduler, cluster: &str, cpu_millis: u64) {
    eventually(
        &format!("{cluster} at {cpu_millis}m"),
        Duration::from_secs(20),
        || async {
            let r = sched
                .client()
                .await
                .list_clusters(pb::ListClustersRequest {})
                .await
                .ok()?;
            let c = r
                .into_inner()
                .clusters
                .into_iter()
                .find(|c| c.name == cluster)?;
            let used = c.allocated?.cpu_millis + c.queued.map_or(0, |q| q.cpu_millis);
            (used >= cpu_millis).then_some(())
        },
    )
    .await
}

async fn policy(sched: &Scheduler) -> pb::PolicyStatus {
    sched
        .client()
        .await
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn hangup(sched: &Scheduler) {
    let pid = sched.pid().expect("the scheduler runs");
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP {pid}");
}

fn schedctl_policy(sched: &Scheduler, args: &[&str]) -> std::process::Output {
    schedctl_command()
        .args(["--server", &sched.url(), "policy"])
        .args(args)
        .output()
        .unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_changed_policy_decides_the_next_job_and_a_bad_one_changes_nothing() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.yaml");
    write(&topology, TOPOLOGY);
    let file = dir.path().join("policy.yaml");
    write(&file, LOCAL);
    let applied = dir.path().join("applied.yaml");
    let bad = dir.path().join("bad.yaml");
    write(&bad, BAD);
    let (t, f) = (topology.display().to_string(), file.display().to_string());
    let sched = Scheduler::start(&etcd.url(), &["--topology", &t, "--policy", &f]).await;
    let mut small = ClusterSpec::new("east-1", "east");
    small.machines = 1;
    let _east = TestCluster::start(&sched.url(), small);
    let _west = TestCluster::start(&sched.url(), ClusterSpec::new("west-1", "west"));
    sched.wait_machines_up(11, Duration::from_secs(20)).await;

    let start = policy(&sched).await;
    assert_eq!(start.source, format!("file {f}"));
    assert_eq!(start.reloads, 0);
    // Locality decides: east.
    assert_eq!(cluster_of(&sched, "j1").await, "east-1");
    wait_allocated(&sched, "east-1", 8000).await;

    // SIGHUP after rewriting the file: headroom decides the next job.
    write(&file, ROOMY);
    hangup(&sched);
    let p = eventually("the file read again", Duration::from_secs(10), || async {
        let p = policy(&sched).await;
        (p.reloads == 1).then_some(p)
    })
    .await;
    assert_eq!(p.source, format!("file {f}"));
    assert!(p.yaml.contains("weight: 100"), "{}", p.yaml);
    let loaded = |p: &pb::PolicyStatus| p.load_time.as_ref().map(sched_proto::wkt::unix_ms);
    assert!(
        loaded(&p) >= loaded(&start),
        "{:?} before {:?}",
        p.load_time,
        start.load_time
    );
    assert_eq!(cluster_of(&sched, "j2").await, "west-1");

    // `schedctl policy apply`: locality decides again.
    write(&applied, LOCAL);
    let out = schedctl_policy(&sched, &["apply", &applied.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = policy(&sched).await;
    assert_eq!(p.reloads, 2);
    assert!(p.source.starts_with("applied by "), "{}", p.source);
    assert_eq!(cluster_of(&sched, "j3").await, "east-1");
    wait_allocated(&sched, "east-1", 16000).await;

    // A bad policy by apply: refused, naming the field; nothing changes.
    let out = schedctl_policy(&sched, &["apply", &bad.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
    assert!(
        stderr.contains("global.scorers[0].weight"),
        "the field is named: {stderr}"
    );
    // A bad file by SIGHUP: refused with the reason; nothing changes.
    write(&file, BAD);
    hangup(&sched);
    let p = eventually("the bad file refused", Duration::from_secs(10), || async {
        let p = policy(&sched).await;
        p.last_refused.contains(&f).then_some(p)
    })
    .await;
    assert!(
        p.last_refused.contains("global.scorers[0].weight"),
        "{}",
        p.last_refused
    );
    assert_eq!(p.reloads, 2, "nothing changed");
    assert!(p.source.starts_with("applied by "), "{}", p.source);
    assert_eq!(cluster_of(&sched, "j4").await, "east-1");

    // `schedctl policy show` prints what is in force.
    let out = schedctl_policy(&sched, &["show"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(shown.contains("# source: applied by "), "{shown}");
    assert!(shown.contains("# last refused: "), "{shown}");
    assert!(shown.contains("weight: 100"), "{shown}");

    // Not tested here: a restarted replica taking the stored policy over
    // (in one CI run the restarted replica did not serve within 30 s, not
    // reproduced in four local runs; see the stop note).
}
