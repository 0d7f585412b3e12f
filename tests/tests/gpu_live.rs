//! GPUs as devices on the live path (issue 16), end to end with real etcd,
//! the real global scheduler, local agent and a node agent started with
//! `--gpus 2 --gpu-model V100M16`: tasks see exactly the devices of their
//! placement (`CUDA_VISIBLE_DEVICES`, `SCHED_GPUS`), shares go two to a
//! device and never over one, a whole-GPU task gets whole devices, a task
//! without GPUs sees none, the API shows each task's devices and each
//! machine's free milli-GPUs, and a job asking for a model no node has
//! stays pending saying so.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, start_etcd, LocalAgent, NodeAgent, Scheduler};

const TOPOLOGY: &str = "config/examples/topology.yaml";
const WAIT: Duration = Duration::from_secs(30);

/// A job of `tasks` tasks asking `gpu` GPUs each, whose command prints
/// what it sees of the GPUs, then runs for `then` (a shell command).
fn job(name: &str, tasks: u32, gpu: Option<&str>, then: &str) -> pb::JobSpec {
    let script =
        format!("echo \"[${{CUDA_VISIBLE_DEVICES-unset}}] [${{SCHED_GPUS-unset}}]\"; {then}");
    pb::JobSpec {
        name: name.to_string(),
        tasks,
        resources: Some(pb::ResourceRequest {
            cpu: "100m".to_string(),
            memory: "32Mi".to_string(),
            disk: None,
            gpu: gpu.map(str::to_string),
        }),
        command: vec!["sh".into(), "-c".into(), script],
        restart: Some(pb::RestartPolicy {
            policy: "never".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `schedctl` against the scheduler; its standard output.
fn schedctl(s: &Scheduler, args: &[&str]) -> String {
    let out = sched_tests::schedctl_command()
        .args(["--server", &s.url()])
        .args(args)
        .output()
        .expect("schedctl runs");
    assert!(
        out.status.success(),
        "schedctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn submit(s: &Scheduler, j: pb::JobSpec) {
    s.client()
        .await
        .submit(pb::SubmitRequest {
            submission_id: j.name.clone(),
            jobs: vec![j],
            ..Default::default()
        })
        .await
        .expect("submit");
}

/// The job's tasks once all are in `state`.
async fn tasks_in(s: &Scheduler, name: &str, state: pb::TaskState) -> Vec<pb::TaskStatus> {
    eventually(&format!("every task of {name} {state:?}"), WAIT, || async {
        let tasks = s.job(name).await?.tasks;
        tasks
            .iter()
            .all(|t| t.state == state as i32)
            .then_some(tasks)
    })
    .await
}

/// What task `index` of `job` printed: `(CUDA_VISIBLE_DEVICES,
/// SCHED_GPUS)`.
async fn seen(work: &Path, job: &str, index: u32) -> (String, String) {
    let out = work
        .join("tasks")
        .join(job)
        .join(index.to_string())
        .join("1/stdout");
    let line = eventually(&format!("{job}/{index}'s output"), WAIT, || async {
        let s = std::fs::read_to_string(&out).ok()?;
        s.lines().next().map(str::to_string)
    })
    .await;
    let strip = |w: &str| w.trim_matches(|c| c == '[' || c == ']').to_string();
    let (visible, gpus) = line.split_once(' ').expect("two words");
    (strip(visible), strip(gpus))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn gpu_tasks_see_their_own_devices_and_shares_go_two_to_a_device() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let mut east = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let work = dir.path().join("g1");
    let _node = NodeAgent::start_with(
        &east.url(),
        "g1",
        "4",
        "2Gi",
        work.clone(),
        &["--gpus", "2", "--gpu-model", "V100M16"],
    );
    sched.wait_machines_up(1, WAIT).await;
    let machine = eventually("the GPU machine listed", WAIT, || async {
        east.machines().await?.into_iter().next()
    })
    .await;
    assert_eq!(machine.capacity.unwrap().gpu_millis, 2000);
    assert_eq!(machine.labels["gpu-model"], "V100M16");
    assert_eq!(machine.gpu_free_millis, [1000, 1000]);

    // A task without GPUs sees none: the variable is set, and empty.
    submit(&sched, job("plain", 1, None, "true")).await;
    tasks_in(&sched, "plain", pb::TaskState::Succeeded).await;
    assert_eq!(
        seen(&work, "plain", 0).await,
        (String::new(), String::new())
    );

    // A whole-GPU task on both devices, from a job file with a model list.
    let file = dir.path().join("whole.yaml");
    std::fs::write(
        &file,
        "jobs:\n  - name: whole\n    tasks: 1\n    resources: {cpu: 100m, memory: 32Mi, gpu: 2}\n    \
         gpu_model: \"V100M32|V100M16\"\n    restart: {policy: never}\n    \
         command: [sh, -c, 'echo \"[$CUDA_VISIBLE_DEVICES] [$SCHED_GPUS]\"']\n",
    )
    .unwrap();
    schedctl(&sched, &["submit", "-f", file.to_str().unwrap()]);
    let t = tasks_in(&sched, "whole", pb::TaskState::Succeeded).await;
    assert_eq!(seen(&work, "whole", 0).await, ("0,1".into(), "0+1".into()));
    assert_eq!(t[0].gpus, "0+1");

    // Four half-GPU tasks that stay up (a model list the node meets):
    // two to a device, each seeing only its own.
    let mut half = job("half", 4, Some("500m"), "exec sleep 600");
    half.constraints
        .insert("gpu-model".into(), "V100M32|V100M16".into());
    submit(&sched, half).await;
    let tasks = tasks_in(&sched, "half", pb::TaskState::Running).await;
    let mut per_device: BTreeMap<String, u32> = BTreeMap::new();
    for t in &tasks {
        let (visible, gpus) = seen(&work, "half", t.index).await;
        assert_eq!(gpus, format!("{visible}:500"), "task {}", t.index);
        assert_eq!(t.gpus, gpus, "the API shows the devices the task sees");
        *per_device.entry(visible).or_default() += 500;
    }
    assert_eq!(
        per_device,
        BTreeMap::from([("0".to_string(), 1000), ("1".to_string(), 1000)]),
        "two shares per device, none over 1000 milli"
    );
    let machine = east.machines().await.unwrap().remove(0);
    assert_eq!(machine.gpu_free_millis, [0, 0]);
    assert_eq!(machine.allocated.unwrap().gpu_millis, 2000);
    // What a person sees: each task's devices, each device's free milli.
    let wide = schedctl(&sched, &["get", "job", "half", "-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.starts_with("INDEX") && l.contains("GPUS")),
        "{wide}"
    );
    assert_eq!(wide.matches(":500").count(), 4, "{wide}");
    let machines = schedctl(&sched, &["get", "machines", "-o", "wide"]);
    assert!(machines.contains("GPU_FREE"), "{machines}");
    assert!(machines.contains(" 0,0 "), "{machines}");

    // A model no machine has, not even in the plan, is refused, naming it.
    let mut h100 = job("h100", 1, Some("500m"), "true");
    h100.constraints.insert("gpu-model".into(), "H100".into());
    let err = sched
        .client()
        .await
        .submit(pb::SubmitRequest {
            submission_id: "h100".into(),
            jobs: vec![h100],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("gpu-model=H100"), "{err:?}");

    // A model whose only node is gone stays pending, saying which model
    // it waits for.
    let mut gone = NodeAgent::start_with(
        &east.url(),
        "a1",
        "4",
        "2Gi",
        dir.path().join("a1"),
        &["--gpus", "1", "--gpu-model", "A100"],
    );
    sched.wait_machines_up(2, WAIT).await;
    gone.kill9();
    eventually("a1 lost", WAIT, || async {
        (sched.machines_up().await == 1).then_some(())
    })
    .await;
    let mut a100 = job("a100", 1, Some("500m"), "true");
    a100.constraints.insert("gpu-model".into(), "A100".into());
    submit(&sched, a100).await;
    let why = eventually("a100's pending reason", WAIT, || async {
        let r = sched
            .client()
            .await
            .describe_job(pb::DescribeJobRequest {
                name: "a100".into(),
            })
            .await
            .ok()?
            .into_inner();
        let task = r.status?.tasks.into_iter().next()?;
        let why = format!("{} | {}", r.pending_reasons.join("; "), task.reason);
        (why.contains("A100") && task.state == pb::TaskState::Pending as i32).then_some(why)
    })
    .await;
    assert!(why.contains("gpu-model"), "{why}");
    let t = sched.job("a100").await.unwrap().tasks.remove(0);
    assert_eq!(t.gpus, "");
    eprintln!("a100 pending: {why}");

    // The local agent restarts: it reads the placements back from etcd and
    // counts each running share on its own device again; cancelling them
    // frees exactly those devices, and a new share runs.
    east.restart().await;
    eventually(
        "the shares counted again after the restart",
        WAIT,
        || async {
            let m = east
                .machines()
                .await?
                .into_iter()
                .find(|m| m.name == "g1")?;
            (m.up && m.gpu_free_millis == [0, 0] && m.tasks.len() == 4).then_some(())
        },
    )
    .await;
    sched
        .client()
        .await
        .cancel_job(pb::CancelJobRequest {
            name: "half".into(),
        })
        .await
        .unwrap();
    eventually("the shares' devices freed", WAIT, || async {
        let m = east
            .machines()
            .await?
            .into_iter()
            .find(|m| m.name == "g1")?;
        (m.gpu_free_millis == [1000, 1000]).then_some(())
    })
    .await;
    submit(&sched, job("again", 1, Some("500m"), "exec sleep 600")).await;
    let t = tasks_in(&sched, "again", pb::TaskState::Running).await;
    let (visible, gpus) = seen(&work, "again", 0).await;
    assert_eq!(gpus, format!("{visible}:500"));
    assert_eq!(t[0].gpus, gpus);
}
