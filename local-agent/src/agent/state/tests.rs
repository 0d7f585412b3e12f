//! The rules that span the agent's parts.

use std::time::{Duration, Instant};

use sched_store::{Expect, KeyValue, Op, StoreError, MAX_COMMIT_BYTES, MAX_OPS_PER_COMMIT};
use tokio::sync::mpsc;

use super::*;
use crate::agent::inventory::tests::{machine, GIB};

/// A machine timeout of zero: no wait for nodes after a start.
fn agent() -> AgentState {
    let now = Instant::now() - Duration::from_secs(1);
    AgentState::new(
        "east-a",
        "/sched",
        LocalPolicy::default(),
        Duration::ZERO,
        now,
    )
}

fn assign(job: &str, indices: Vec<u32>, command: Vec<String>) -> pb::AssignmentBatch {
    pb::AssignmentBatch {
        assignments: vec![pb::Assignment {
            job: job.to_string(),
            indices,
            request: Some(pb::Resources {
                cpu_millis: 1000,
                memory_bytes: GIB,
                disk_bytes: 0,
                gpu_millis: 0,
            }),
            constraints: Default::default(),
            command,
            priority: 0,
        }],
        cancelled_jobs: Vec::new(),
        seq: 1,
        ..Default::default()
    }
}

fn web(indices: Vec<u32>) -> pb::AssignmentBatch {
    assign("web", indices, vec!["true".to_string()])
}

/// Writes the pass's commits as a store would, at revisions from `rev`.
fn apply_all(a: &mut AgentState, rev: &mut Revision) -> Vec<KeyValue> {
    let mut stored = Vec::new();
    for commit in a.commits(100_000, Instant::now()) {
        *rev += 1;
        for c in &commit {
            if let Op::Put(value) = &c.write().op {
                stored.push(KeyValue {
                    key: c.write().key.clone(),
                    value: value.clone(),
                    mod_revision: *rev,
                    create_revision: *rev,
                });
            }
        }
        a.applied(commit, *rev);
    }
    stored
}

fn states(reports: &[pb::TaskReport]) -> Vec<(u32, pb::TaskState, String)> {
    reports
        .iter()
        .map(|r| {
            (
                r.index,
                pb::TaskState::try_from(r.state).unwrap(),
                r.machine.clone(),
            )
        })
        .collect()
}

fn node_task(index: u32, machine: &str, state: pb::TaskState) -> pb::NodeTask {
    pb::NodeTask {
        job: "web".into(),
        index,
        machine: machine.into(),
        state: state as i32,
        exit_code: (state == pb::TaskState::Succeeded).then_some(0),
        attempt: 1,
        reason: String::new(),
    }
}

/// Opens a node's work stream.
fn work(a: &mut AgentState, node: &str) -> mpsc::Receiver<Result<pb::WorkBatch, tonic::Status>> {
    let (tx, rx) = mpsc::channel(1024);
    a.open_work(node, tx).unwrap();
    rx
}

fn starts(rx: &mut mpsc::Receiver<Result<pb::WorkBatch, tonic::Status>>) -> Vec<pb::TaskStart> {
    let mut out = Vec::new();
    while let Ok(b) = rx.try_recv() {
        out.extend(b.unwrap().start);
    }
    out
}

#[test]
fn a_resync_reports_every_stored_placement() {
    let mut a = agent();
    a.register_node("n0", "", &[machine("m0", 2000)], &[], Instant::now());
    a.receive(web(vec![0, 1, 2]));
    let mut rev = 6;
    apply_all(&mut a, &mut rev);
    a.node_reports("n0", &[node_task(0, "m0", pb::TaskState::Succeeded)])
        .unwrap();
    // The call that carried these reports failed, and the agent died
    // with them.
    let out = a.take_reports(100);
    // Two fit; the third is handed back.
    assert_eq!(out.hand_backs.len(), 1);
    a.resync_reports();
    // Sessions that fail and start again do not pile reports up.
    a.resync_reports();
    let out = a.take_reports(100);
    assert_eq!(
        states(&out.tasks),
        [
            (0, pb::TaskState::Succeeded, "m0".to_string()),
            (1, pb::TaskState::Placed, "m0".to_string()),
        ]
    );
    assert_eq!(out.tasks[0].exit_code, Some(0));
}

#[test]
fn a_lost_machine_reports_the_loss_and_leaves_the_retry_to_the_global_scheduler() {
    let mut a = agent();
    let t0 = Instant::now();
    a.register_node("n0", "", &[machine("m0", 1000)], &[], t0);
    a.receive(web(vec![0]));
    let mut rev = 6;
    apply_all(&mut a, &mut rev);
    a.take_reports(100);
    // The node goes silent (timeout 0): the task is lost and stored so;
    // whether it runs again, and when, is the global scheduler's call (its
    // restart rules): nothing is queued or handed back here.
    a.expire(t0 + Duration::from_millis(1));
    let stored = apply_all(&mut a, &mut rev);
    assert_eq!(stored.len(), 1);
    assert!(stored[0]
        .value
        .windows(14)
        .any(|w| w == b"\"state\":\"lost\""));
    let out = a.take_reports(100);
    assert_eq!(
        states(&out.tasks),
        [(0, pb::TaskState::Lost, String::new())]
    );
    assert!(out.hand_backs.is_empty());
    assert_eq!(a.heartbeat_request().queue_len, 0);
    assert!(a.check().is_ok());
}

#[test]
fn a_lost_task_goes_to_another_machine_as_the_next_attempt() {
    let mut a = agent();
    let t0 = Instant::now();
    a.register_node("n0", "", &[machine("m0", 1000)], &[], t0);
    a.receive(web(vec![0]));
    let mut rev = 6;
    apply_all(&mut a, &mut rev);
    a.register_node(
        "n1",
        "",
        &[machine("m1", 1000)],
        &[],
        t0 + Duration::from_millis(5),
    );
    let mut n1 = work(&mut a, "n1");
    a.expire(t0 + Duration::from_millis(1));
    // The scheduler hears of the loss and hands the task over again.
    a.receive(web(vec![0]));
    let stored = apply_all(&mut a, &mut rev);
    // One write: the new placement, which supersedes the loss.
    assert_eq!(stored.len(), 1);
    let s = starts(&mut n1);
    assert_eq!((s[0].machine.as_str(), s[0].attempt), ("m1", 2));
    assert!(a.check().is_ok());
}

#[test]
fn a_long_command_is_stored_once_per_job_and_reaches_the_node() {
    // Issue 10: every placement record copied the command, so 127 of them
    // of an 11 KB command made a commit over the byte limit, refused and
    // retried forever.
    let command = vec!["sh".to_string(), "-c".to_string(), "x".repeat(11_000)];
    let mut a = agent();
    let machines: Vec<pb::MachineSpec> = (0..4)
        .map(|i| {
            let mut m = machine(&format!("m{i}"), 100_000);
            m.capacity.as_mut().unwrap().memory_bytes = 100 * GIB;
            m
        })
        .collect();
    a.register_node("n0", "", &machines, &[], Instant::now());
    let mut rx = work(&mut a, "n0");
    a.receive(assign("web", (0..300).collect(), command.clone()));
    let commits = a.commits(1000, Instant::now());
    for commit in &commits {
        assert!(commit.len() <= MAX_OPS_PER_COMMIT);
        let bytes: usize = commit.iter().map(|c| c.write().size()).sum();
        assert!(bytes <= MAX_COMMIT_BYTES);
    }
    let all: Vec<&Change> = commits.iter().flatten().collect();
    assert_eq!(all.len(), 301);
    // The spec comes first, once; each placement is small.
    assert!(matches!(all[0], Change::Spec { .. }));
    assert!(all[1..].iter().all(|c| c.write().size() < 200));
    let mut rev = 0;
    for commit in commits {
        rev += 1;
        a.applied(commit, rev);
    }
    let started = starts(&mut rx);
    assert_eq!(started.len(), 300);
    assert!(started.iter().all(|s| s.command == command));
    // Nothing is written twice.
    assert!(a.commits(1000, Instant::now()).is_empty());
}

#[test]
fn a_spec_too_large_for_any_commit_hands_the_tasks_back_once() {
    let command = vec!["x".repeat(MAX_COMMIT_BYTES)];
    let mut a = agent();
    a.register_node("n0", "", &[machine("m0", 10_000)], &[], Instant::now());
    a.receive(assign("huge", vec![0, 1], command));
    a.receive(web(vec![0]));
    let commits = a.commits(100, Instant::now());
    // Only the small job is written.
    let keys: Vec<String> = commits
        .iter()
        .flatten()
        .map(|c| c.write().key.clone())
        .collect();
    assert_eq!(
        keys,
        [
            "/sched/placements/east-a/web/spec",
            "/sched/placements/east-a/web/0000000"
        ]
    );
    let out = a.take_reports(100);
    assert_eq!(out.hand_backs.len(), 2);
    assert_eq!(out.hand_backs[0].job, "huge");
    let reason = &out.hand_backs[0].reason;
    assert!(
        reason.contains("huge/spec") && reason.contains("bytes"),
        "{reason}"
    );
    // Its capacity is free again, and it is not tried again.
    for commit in commits {
        a.applied(commit, 3);
    }
    assert_eq!(a.heartbeat_request().allocated.unwrap().cpu_millis, 1000);
    assert!(a.commits(100, Instant::now()).is_empty());
    assert!(a.take_reports(100).hand_backs.is_empty());
}

#[test]
fn after_a_restart_a_task_placed_but_never_started_starts_with_its_stored_command() {
    let command = vec!["sleep".to_string(), "1000".to_string()];
    let mut a = agent();
    a.register_node("n0", "", &[machine("m0", 4000)], &[], Instant::now());
    a.receive(assign("web", vec![0, 1], command.clone()));
    let mut rev = 0;
    let stored = apply_all(&mut a, &mut rev);
    // The agent dies; task 1's start never reached the node, which runs
    // task 0 only.
    let mut b = agent();
    b.load(&stored).unwrap();
    let running = node_task(0, "m0", pb::TaskState::Running);
    b.register_node("n0", "", &[machine("m0", 4000)], &[running], Instant::now());
    let mut rx = work(&mut b, "n0");
    let s = starts(&mut rx);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].index, &s[0].command), (1, &command));
    // Both count on the machine again.
    assert_eq!(b.heartbeat_request().allocated.unwrap().cpu_millis, 2000);
    assert!(b.commits(100, Instant::now()).is_empty());
}

#[test]
fn a_record_of_an_older_agent_gives_the_spec_back_and_it_is_stored() {
    let old = br#"{"machine":"m0","attempt":1,"state":"placed","cpu_millis":500,"memory_bytes":1024,"command":["sleep","9"],"priority":0}"#;
    let kv = KeyValue {
        key: "/sched/placements/east-a/web/0000000".into(),
        value: old.to_vec(),
        mod_revision: 4,
        create_revision: 4,
    };
    let mut a = agent();
    a.load(&[kv]).unwrap();
    a.register_node("n0", "", &[machine("m0", 2000)], &[], Instant::now());
    let mut rx = work(&mut a, "n0");
    assert_eq!(starts(&mut rx)[0].command, ["sleep", "9"]);
    assert_eq!(a.heartbeat_request().allocated.unwrap().cpu_millis, 500);
    // The spec goes into the store with the job's next placement.
    a.receive(web(vec![1]));
    let keys: Vec<String> = a
        .commits(100, Instant::now())
        .iter()
        .flatten()
        .map(|c| c.write().key.clone())
        .collect();
    assert_eq!(keys[0], "/sched/placements/east-a/web/spec");
}

#[test]
fn a_stored_record_that_cannot_be_read_is_refused_by_key() {
    let kv = KeyValue {
        key: "/sched/placements/east-a/web/0000000".into(),
        value: b"{".to_vec(),
        mod_revision: 4,
        create_revision: 4,
    };
    let err = agent().load(&[kv]).unwrap_err();
    assert!(matches!(err, AgentError::BadRecord { ref key, .. } if key.ends_with("web/0000000")));
}

#[test]
fn a_failed_commit_waits_again_or_is_handed_back() {
    let mut a = agent();
    a.register_node("n0", "", &[machine("m0", 4000)], &[], Instant::now());
    a.receive(web(vec![0, 1]));
    // Unavailable: the outcome is unknown; re-read, then try again.
    let commit = a.commits(100, Instant::now()).remove(0);
    let unavailable = AgentError::from(StoreError::Unavailable("down".into()));
    let keys = a.failed(commit, &unavailable);
    assert_eq!(keys.len(), 3);
    assert_eq!(a.heartbeat_request().allocated.unwrap().cpu_millis, 0);
    assert_eq!(a.heartbeat_request().queue_len, 2);
    for k in &keys {
        a.refresh(k, None);
    }
    let commit = a.commits(100, Instant::now()).remove(0);
    assert_eq!(commit[0].write().expect, Expect::Absent);
    // A refusal that a retry cannot mend: handed back, with the reason.
    let refused = AgentError::from(StoreError::Backend("request is too large".into()));
    a.failed(commit, &refused);
    let out = a.take_reports(100);
    assert_eq!(out.hand_backs[0].indices, [0, 1]);
    assert!(out.hand_backs[0].reason.contains("too large"));
    assert!(a.commits(100, Instant::now()).is_empty());
    assert!(a.check().is_ok());
}

#[test]
fn a_stale_running_copy_is_stopped_and_cancelled_jobs_stop() {
    let mut a = agent();
    let t0 = Instant::now();
    a.register_node("n0", "", &[machine("m0", 4000)], &[], t0);
    let mut rx = work(&mut a, "n0");
    a.receive(web(vec![0]));
    let mut rev = 0;
    apply_all(&mut a, &mut rev);
    rx.try_recv().unwrap().unwrap();
    // A copy of a task this cluster never placed there.
    let mut stale = node_task(5, "m0", pb::TaskState::Running);
    stale.attempt = 3;
    a.node_reports("n0", &[stale]).unwrap();
    assert_eq!(rx.try_recv().unwrap().unwrap().stop[0].index, 5);
    // Cancelled: its running task is stopped, and nothing more placed.
    let mut cancel = web(Vec::new());
    cancel.assignments.clear();
    cancel.cancelled_jobs.push("web".into());
    a.receive(cancel);
    assert_eq!(rx.try_recv().unwrap().unwrap().stop[0].index, 0);
    assert!(matches!(
        a.node_reports("stranger", &[]),
        Err(AgentError::NotRegistered(_))
    ));
}

#[test]
fn a_task_the_node_no_longer_runs_is_lost_and_a_resync_says_where_tasks_are() {
    let mut a = agent();
    let t0 = Instant::now();
    a.register_node("n0", "", &[machine("m0", 4000)], &[], t0);
    a.receive(web(vec![0]));
    let mut rev = 0;
    apply_all(&mut a, &mut rev);
    a.node_reports("n0", &[node_task(0, "m0", pb::TaskState::Running)])
        .unwrap();
    a.take_reports(100);
    // The global scheduler resends the assignment: the agent says where
    // the task is rather than placing it twice.
    a.receive(web(vec![0]));
    assert!(a.commits(100, t0).is_empty());
    let out = a.take_reports(100);
    assert_eq!(
        states(&out.tasks),
        [(0, pb::TaskState::Running, "m0".into())]
    );
    // The node restarts without it: lost; handed over again, it is
    // placed again as the next attempt.
    a.register_node("n0", "", &[machine("m0", 4000)], &[], t0);
    let out = a.take_reports(100);
    assert_eq!(
        states(&out.tasks),
        [(0, pb::TaskState::Lost, String::new())]
    );
    a.receive(web(vec![0]));
    let stored = apply_all(&mut a, &mut rev);
    assert_eq!(stored.len(), 1);
    assert!(stored[0].value.windows(11).any(|w| w == b"\"attempt\":2"));
    assert!(a.check().is_ok());
}

/// Every batch a node's stream carried, drained.
fn batches(rx: &mut mpsc::Receiver<Result<pb::WorkBatch, tonic::Status>>) -> Vec<pb::WorkBatch> {
    let mut out = Vec::new();
    while let Ok(b) = rx.try_recv() {
        out.push(b.unwrap());
    }
    out
}

#[test]
fn a_deleted_job_is_forgotten_here_in_the_store_and_on_its_nodes() {
    let mut a = agent();
    let t0 = Instant::now();
    a.register_node("n0", "", &[machine("m0", 4000)], &[], t0);
    a.register_node("n1", "", &[machine("m1", 4000)], &[], t0);
    let mut n0 = work(&mut a, "n0");
    let mut n1 = work(&mut a, "n1");
    a.receive(web(vec![0]));
    let mut rev = 0;
    apply_all(&mut a, &mut rev);
    let on = starts(&mut n0).len() + starts(&mut n1).len();
    assert_eq!(on, 1);
    a.receive(pb::AssignmentBatch {
        deleted_jobs: vec!["web".into(), "never-here".into()],
        ..Default::default()
    });
    // One delete of the job's prefix (spec and placements), in a commit
    // of its own; nothing for a job this cluster never had.
    let commits = a.commits(100, t0);
    assert_eq!(commits.len(), 1);
    let writes: Vec<&sched_store::Write> = commits[0].iter().map(|c| c.write()).collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].op, Op::DeletePrefix);
    assert_eq!(writes[0].key, "/sched/placements/east-a/web/");
    // The node that ran it is told to forget it; the other is not.
    let told: Vec<Vec<String>> = batches(&mut n0)
        .into_iter()
        .chain(batches(&mut n1))
        .map(|b| b.forget_jobs)
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(told, [vec!["web".to_string()]]);
    // Its capacity is free, and the name can come back as a new job.
    assert_eq!(a.heartbeat_request().allocated.unwrap().cpu_millis, 0);
    a.receive(web(vec![0]));
    let stored = apply_all(&mut a, &mut rev);
    assert!(stored
        .iter()
        .any(|kv| kv.value.windows(11).any(|w| w == b"\"attempt\":1")));
    assert!(a.check().is_ok());
}

#[test]
fn a_resync_stops_what_was_taken_back_and_forgets_what_was_deleted() {
    let mut a = agent();
    let t0 = Instant::now();
    a.register_node("n0", "", &[machine("m0", 4000)], &[], t0);
    let mut n0 = work(&mut a, "n0");
    a.receive(web(vec![0, 1]));
    a.receive(assign("old", vec![0], vec!["true".into()]));
    let mut rev = 0;
    apply_all(&mut a, &mut rev);
    starts(&mut n0);
    // The scheduler took web/1 back and deleted `old` while we were away.
    a.receive(pb::AssignmentBatch {
        resync: true,
        held: vec![pb::JobTasks {
            job: "web".into(),
            indices: vec![0],
        }],
        ..Default::default()
    });
    let b = batches(&mut n0);
    let stops: Vec<(String, u32)> = b
        .iter()
        .flat_map(|b| b.stop.iter().map(|s| (s.job.clone(), s.index)))
        .collect();
    assert_eq!(stops, [("web".to_string(), 1)]);
    assert!(b.iter().any(|b| b.forget_jobs == ["old"]));
    let commits = a.commits(100, t0);
    let deletes: Vec<(String, Op)> = commits
        .iter()
        .flatten()
        .map(|c| (c.write().key.clone(), c.write().op.clone()))
        .collect();
    assert!(deletes.contains(&("/sched/placements/east-a/old/".into(), Op::DeletePrefix)));
    assert!(deletes.contains(&("/sched/placements/east-a/web/0000001".into(), Op::Delete)));
    assert_eq!(deletes.len(), 2);
    // web/0 is still here and still reported.
    a.resync_reports();
    let out = a.take_reports(100);
    assert_eq!(states(&out.tasks).len(), 1);
    assert!(a.check().is_ok());
}

/// Runs a pass's commits as a store would: every write of it, in order.
fn writes_of_pass(a: &mut AgentState, rev: &mut Revision) -> Vec<sched_store::Write> {
    let mut writes = Vec::new();
    for commit in a.commits(100_000, Instant::now()) {
        *rev += 1;
        writes.extend(commit.iter().map(|c| c.write().clone()));
        a.applied(commit, *rev);
    }
    writes
}

/// Issue 15: one task's happy path here puts its placement once (and its
/// job's spec, once per job); its success is reported, not written, and
/// the key is deleted once the global scheduler has acknowledged it.
#[test]
fn the_happy_path_puts_a_placement_once_and_deletes_it_once_acknowledged() {
    let mut a = agent();
    a.register_node("n0", "", &[machine("m0", 2000)], &[], Instant::now());
    a.receive(web(vec![0]));
    let mut rev = 6;
    let w = writes_of_pass(&mut a, &mut rev);
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/sched/placements/east-a/web/spec",
            "/sched/placements/east-a/web/0000000"
        ]
    );
    assert!(w.iter().all(|w| matches!(w.op, Op::Put(_))));
    for state in [pb::TaskState::Running, pb::TaskState::Succeeded] {
        a.node_reports("n0", &[node_task(0, "m0", state)]).unwrap();
        assert!(writes_of_pass(&mut a, &mut rev).is_empty());
    }
    let out = a.take_reports(100);
    assert_eq!(
        states(&out.tasks),
        [
            (0, pb::TaskState::Placed, "m0".to_string()),
            (0, pb::TaskState::Running, "m0".to_string()),
            (0, pb::TaskState::Succeeded, "m0".to_string()),
        ]
    );
    // Until the call returns, nothing is deleted.
    assert!(writes_of_pass(&mut a, &mut rev).is_empty());
    a.reports_delivered(&out.tasks);
    let w = writes_of_pass(&mut a, &mut rev);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].key, "/sched/placements/east-a/web/0000000");
    assert_eq!(
        (w[0].op.clone(), w[0].expect),
        (Op::Delete, Expect::ModRevision(7))
    );
    assert!(writes_of_pass(&mut a, &mut rev).is_empty());
    // A resync has nothing more to say of it.
    a.resync_reports();
    assert!(a.take_reports(100).tasks.is_empty());
}

/// The agent restarts before the global scheduler acknowledged a success:
/// it reads the placement back as placed, its node says how it ended, and
/// the resync reports it again; then its key goes.
#[test]
fn a_success_not_acknowledged_before_a_restart_is_reported_again() {
    let mut a = agent();
    a.register_node("n0", "", &[machine("m0", 2000)], &[], Instant::now());
    a.receive(web(vec![0]));
    let mut rev = 6;
    let stored = apply_all(&mut a, &mut rev);
    a.node_reports("n0", &[node_task(0, "m0", pb::TaskState::Succeeded)])
        .unwrap();
    assert!(apply_all(&mut a, &mut rev).is_empty());
    // The report call is under way when the agent dies.
    a.take_reports(100);
    drop(a);

    let mut b = agent();
    b.load(&stored).unwrap();
    b.register_node(
        "n0",
        "",
        &[machine("m0", 2000)],
        &[node_task(0, "m0", pb::TaskState::Succeeded)],
        Instant::now(),
    );
    b.resync_reports();
    let out = b.take_reports(100);
    assert_eq!(
        states(&out.tasks),
        [(0, pb::TaskState::Succeeded, "m0".to_string())]
    );
    // The scheduler is away: the success is written after all, once.
    b.session_failed();
    b.session_failed();
    let w = writes_of_pass(&mut b, &mut rev);
    assert_eq!(w.len(), 1);
    assert!(matches!(&w[0].op, Op::Put(v) if v.windows(11).any(|w| w == b"\"succeeded\"")));
    b.reports_delivered(&out.tasks);
    let w = writes_of_pass(&mut b, &mut rev);
    assert_eq!((w[0].op.clone(), w.len()), (Op::Delete, 1));
}

fn gpu_machine(name: &str) -> pb::MachineSpec {
    let mut m = machine(name, 4000);
    m.gpu_devices = 2;
    m.gpu_model = "V100M16".into();
    m
}

fn shares(job: &str, indices: Vec<u32>) -> pb::AssignmentBatch {
    let mut b = assign(job, indices, vec!["true".to_string()]);
    let a = &mut b.assignments[0];
    a.request.as_mut().unwrap().cpu_millis = 100;
    a.request.as_mut().unwrap().gpu_millis = 500;
    b
}

fn devices(s: &[pb::TaskStart]) -> Vec<(u32, Vec<(u32, u32)>)> {
    s.iter()
        .map(|s| {
            (
                s.index,
                s.gpus.iter().map(|g| (g.device, g.milli)).collect(),
            )
        })
        .collect()
}

#[test]
fn gpu_devices_reach_the_node_and_a_restart_takes_the_stored_ones_again() {
    let mut a = agent();
    a.register_node("n0", "", &[gpu_machine("g0")], &[], Instant::now());
    let mut rx = work(&mut a, "n0");
    a.receive(shares("half", vec![0, 1]));
    let mut rev = 0;
    let mut stored = apply_all(&mut a, &mut rev);
    // Best fit: both shares on one device.
    assert_eq!(
        devices(&starts(&mut rx)),
        [(0, vec![(0, 500)]), (1, vec![(0, 500)])]
    );
    let reports = a.take_reports(100);
    assert!(
        reports.tasks.iter().all(|r| r.gpus == "0:500"),
        "{reports:?}"
    );
    // Say the stored placements are on device 1 (as an older decision
    // may have put them): a restarted agent must count them there, not
    // where it would choose today.
    for kv in &mut stored {
        if let Ok(mut r) = serde_json::from_slice::<PlacementRecord>(&kv.value) {
            r.gpus = vec![sched_core::gpu::GpuSlot {
                device: 1,
                milli: 500,
            }];
            kv.value = serde_json::to_vec(&r).unwrap();
        }
    }
    let mut b = agent();
    b.load(&stored).unwrap();
    let running = pb::NodeTask {
        job: "half".into(),
        ..node_task(0, "g0", pb::TaskState::Running)
    };
    b.register_node("n0", "", &[gpu_machine("g0")], &[running], Instant::now());
    let mut rx = work(&mut b, "n0");
    // Task 1 never started: it starts on its stored device.
    assert_eq!(devices(&starts(&mut rx)), [(1, vec![(1, 500)])]);
    let free = |b: &AgentState| {
        b.inventory.statuses("east-a", BTreeMap::new())[0]
            .gpu_free_millis
            .clone()
    };
    assert_eq!(free(&b), [1000, 0]);
    // A new share goes to the device that is free in fact.
    b.receive(pb::AssignmentBatch {
        seq: 2,
        ..shares("more", vec![0])
    });
    apply_all(&mut b, &mut rev);
    assert_eq!(devices(&starts(&mut rx)), [(0, vec![(0, 500)])]);
    assert_eq!(free(&b), [500, 0]);
    // A finished task gives back exactly its device.
    let done = pb::NodeTask {
        job: "half".into(),
        ..node_task(0, "g0", pb::TaskState::Succeeded)
    };
    b.node_reports("n0", &[done]).unwrap();
    assert_eq!(free(&b), [500, 500]);
    assert!(b.inventory.check().is_ok());
}

/// The heartbeat's room as (class cpu, free cpu, free GiB, machines),
/// sorted.
fn room_of(hb: &pb::HeartbeatRequest) -> Vec<(u64, u64, u64, u32)> {
    let room = hb.room.as_ref().expect("a room report");
    let mut out: Vec<(u64, u64, u64, u32)> = room
        .groups
        .iter()
        .map(|g| {
            let class = hb.classes[g.class_index as usize].capacity.unwrap();
            let free = g.free.unwrap();
            (
                class.cpu_millis,
                free.cpu_millis,
                free.memory_bytes / GIB,
                g.count,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_heartbeat_reports_each_machines_room_less_what_is_queued() {
    let mut a = agent();
    a.register_node(
        "n0",
        "",
        &[
            machine("m0", 4000),
            machine("m1", 4000),
            machine("m2", 8000),
        ],
        &[],
        Instant::now(),
    );
    // Identical empty machines are one group.
    assert_eq!(
        room_of(&a.heartbeat_request()),
        [(4000, 4000, 4, 2), (8000, 8000, 4, 1)]
    );
    // Three 1-cpu, 1 GiB tasks taken in and not packed yet take the room
    // the packer will give them: the smallest machine that holds them.
    a.receive(web(vec![0, 1, 2]));
    let hb = a.heartbeat_request();
    assert_eq!(hb.queue_len, 3);
    assert_eq!(
        room_of(&hb),
        [(4000, 1000, 1, 1), (4000, 4000, 4, 1), (8000, 8000, 4, 1)]
    );
    // Placed: the room is the machines', wherever the packer put them.
    let mut rev = 1;
    apply_all(&mut a, &mut rev);
    let hb = a.heartbeat_request();
    assert_eq!(hb.queue_len, 0);
    let room = room_of(&hb);
    assert_eq!(room.iter().map(|g| g.3).sum::<u32>(), 3);
    let free: u64 = room.iter().map(|g| g.1 * u64::from(g.3)).sum();
    assert_eq!(free, 16_000 - 3000);
    // A machine registered since has its own group.
    a.register_node("n1", "", &[machine("m3", 2000)], &[], Instant::now());
    assert!(room_of(&a.heartbeat_request()).contains(&(2000, 2000, 4, 1)));
}
