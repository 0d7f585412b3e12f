//! The state's rules, without a store.

use sched_core::resources::Resources;
use sched_core::room::{ClusterRoom, RoomGroup};
use sched_core::topology::Topology;

use sched_core::job::JobSpec;
use sched_proto::pb;
use sched_store::KeyValue;

use super::*;
use crate::error::ServiceError;
use crate::records::{ClusterRecord, MachineClassRecord, TaskRecord};
use crate::registry::Heartbeat;

const TOPOLOGY: &str = r#"
locations: [{name: east}, {name: west}]
links: [{from: east, to: west, latency_ms: 70}]
clusters:
  - {name: unused, location: east, machines: [{class: std, count: 1, cpu: 1, memory: 1Gi}]}
"#;

/// A state with clusters `(name, location, machines of 4 cpu / 16 GiB)`,
/// all up and empty.
fn state(clusters: &[(&str, &str, u32)]) -> State {
    let topology = Topology::from_yaml(TOPOLOGY).unwrap();
    let mut registry = Registry::new(Some(&topology), std::time::Duration::from_secs(5));
    for (name, location, machines) in clusters {
        registry.register(
            ClusterRecord {
                name: name.to_string(),
                location: location.to_string(),
                address: String::new(),
                classes: vec![MachineClassRecord {
                    name: "std".into(),
                    capacity: Resources::new(4000, 16 << 30).into(),
                    labels: Default::default(),
                    count: *machines,
                    last_seen_unix_ms: 0,
                }],
                seen_classes: Vec::new(),
                registered_unix_ms: 0,
            },
            true,
        );
    }
    State::new(Keys::new("/t"), registry, Policy::default())
}

fn submit(
    s: &mut State,
    name: &str,
    tasks: u32,
    cpu_millis: u64,
    locality: Option<&str>,
    priority: u32,
) {
    let spec = JobSpec {
        name: name.into(),
        tasks,
        request: Resources::new(cpu_millis, 1 << 30),
        priority,
        locality: locality.map(str::to_string),
        constraints: Default::default(),
        command: vec!["true".to_string()],
        restart: Default::default(),
        ttl_after_finished: None,
        tenant: sched_core::job::DEFAULT_TENANT.to_string(),
        band: None,
    };
    let records = s.check_submission(vec![spec], "sub", 0).unwrap();
    for r in records {
        s.insert_job(r, 1);
    }
}

/// Plans, and applies the plan as if etcd took it.
fn pass(s: &mut State, limit: u64) -> Vec<(String, String, usize)> {
    let plan = s.plan(limit);
    let changes: Vec<TaskChange> = plan.iter().flat_map(|a| s.assignment_changes(a)).collect();
    s.apply(changes, 2);
    plan.iter()
        .map(|a| {
            (
                s.names[&a.job].clone(),
                s.registry().name(a.cluster).to_string(),
                a.indices.len(),
            )
        })
        .collect()
}

#[test]
fn a_job_goes_to_its_location_as_far_as_unclaimed_capacity_holds() {
    // east-a: 2 machines x 4 cpu = 8 cpu; 12 tasks of 1 cpu: 8 fit east
    // (locality wins), the other 4 go to the next best, west-a.
    let mut s = state(&[("east-a", "east", 2), ("west-a", "west", 10)]);
    submit(&mut s, "web", 12, 1000, Some("east"), 0);
    assert_eq!(
        pass(&mut s, 1000),
        [
            ("web".into(), "east-a".into(), 8),
            ("web".into(), "west-a".into(), 4)
        ]
    );
    assert_eq!(s.pending_tasks(), 0);
    // Everything is promised: the next pass has nothing to do.
    assert!(pass(&mut s, 1000).is_empty());
}

#[test]
fn higher_priority_first_when_the_pass_is_limited() {
    let mut s = state(&[("east-a", "east", 10)]);
    submit(&mut s, "low", 5, 100, None, 0);
    submit(&mut s, "high", 5, 100, None, 500);
    // A pass of 7 tasks: all of `high`, then 2 of `low`; `low` is
    // carried over to the next pass.
    assert_eq!(
        pass(&mut s, 7),
        [
            ("high".into(), "east-a".into(), 5),
            ("low".into(), "east-a".into(), 2)
        ]
    );
    assert_eq!(pass(&mut s, 7), [("low".into(), "east-a".into(), 3)]);
}

#[test]
fn handed_back_tasks_skip_the_cluster_that_refused_them() {
    let mut s = state(&[("east-a", "east", 10), ("west-a", "west", 10)]);
    submit(&mut s, "web", 4, 1000, Some("east"), 0);
    assert_eq!(pass(&mut s, 100), [("web".into(), "east-a".into(), 4)]);
    let east = s.registry().id("east-a").unwrap();
    let changes = s.hand_back_changes(
        east,
        &pb::HandBack {
            job: "web".into(),
            indices: vec![1, 3],
            reason: "full".into(),
        },
    );
    assert_eq!(changes.len(), 2);
    s.apply(changes, 3);
    assert_eq!(s.pending_of(s.job("web").unwrap()), 2);
    assert_eq!(pass(&mut s, 100), [("web".into(), "west-a".into(), 2)]);
    // A stale report (a task now on west-a) changes nothing.
    let stale = pb::TaskReport {
        job: "web".into(),
        index: 1,
        state: pb::TaskState::Placed as i32,
        machine: "m1".into(),
        exit_code: None,
        reason: String::new(),
        gpus: String::new(),
    };
    assert!(s.report_change(east, &stale).is_none());
}

#[test]
fn a_hand_back_returns_a_task_the_scheduler_still_thinks_runs() {
    // The agent lost the machine and could not place the task again;
    // the loss and the hand-back reach the scheduler in one call, so
    // the task is still `running` here when the hand-back is read.
    let mut s = state(&[("east-a", "east", 10), ("west-a", "west", 10)]);
    submit(&mut s, "web", 2, 1000, Some("east"), 0);
    pass(&mut s, 100);
    let east = s.registry().id("east-a").unwrap();
    let running = pb::TaskReport {
        job: "web".into(),
        index: 0,
        state: pb::TaskState::Running as i32,
        machine: "m1".into(),
        exit_code: None,
        reason: String::new(),
        gpus: String::new(),
    };
    let c = s.report_change(east, &running).unwrap();
    s.apply(vec![c], 3);
    // A restarted agent knows it as placed until the node reports:
    // no step back.
    let placed = pb::TaskReport {
        state: pb::TaskState::Placed as i32,
        ..running.clone()
    };
    assert!(s.report_change(east, &placed).is_none());
    let changes = s.hand_back_changes(
        east,
        &pb::HandBack {
            job: "web".into(),
            indices: vec![0],
            reason: "no machine".into(),
        },
    );
    assert_eq!(changes.len(), 1);
    s.apply(changes, 4);
    assert_eq!(s.pending_of(s.job("web").unwrap()), 1);
    assert_eq!(pass(&mut s, 100), [("web".into(), "west-a".into(), 1)]);
}

#[test]
fn jobs_are_sized_against_every_machine_a_cluster_has_had() {
    let mut s = state(&[("east-a", "east", 10)]);
    let spec = |cpu_millis| JobSpec {
        name: "big".into(),
        tasks: 1,
        request: Resources::new(cpu_millis, 1 << 30),
        priority: 0,
        locality: None,
        constraints: Default::default(),
        command: vec!["true".to_string()],
        restart: Default::default(),
        ttl_after_finished: None,
        tenant: sched_core::job::DEFAULT_TENANT.to_string(),
        band: None,
    };
    // The agent restarts and registers before its nodes do: no machine
    // right now, but a 4-cpu task still fits what the cluster has.
    let mut record = s.registry().entries()[0].record.clone();
    record.classes.clear();
    record.seen_classes.clear();
    s.registry_mut().register(record, true);
    assert_eq!(s.registry().entries()[0].record.seen_classes.len(), 1);
    assert!(s.check_submission(vec![spec(4000)], "a", 0).is_ok());
    // What no machine ever had is still refused, naming the field.
    let e = s.check_submission(vec![spec(5000)], "b", 0).unwrap_err();
    let crate::error::ServiceError::Invalid(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.field, "jobs[0].resources.cpu");
}

#[test]
fn a_heartbeat_counts_only_the_assignments_it_has_seen() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "a", 3, 1000, None, 0);
    pass(&mut s, 100);
    let e = &s.registry().entries()[0];
    assert_eq!((e.in_flight, e.handed_total), (3, 3));
    // A heartbeat sent before the agent took the batch in (seq 0):
    // the 3 tasks stay counted, so only 1 more cpu looks free.
    s.registry_mut().heartbeat("east-a", Heartbeat::default());
    assert_eq!(s.registry().entries()[0].summary.unclaimed().cpu.0, 1000);
    // Once it has seen seq 3 its own figures count them.
    s.registry_mut().heartbeat(
        "east-a",
        Heartbeat {
            allocated: Resources::new(3000, 3 << 30),
            seq_seen: 3,
            ..Default::default()
        },
    );
    let e = &s.registry().entries()[0];
    assert_eq!(e.in_flight, 0);
    assert_eq!(e.summary.unclaimed().cpu.0, 1000);
}

/// A room report of `count` machines of the clusters' one class (4 cpu,
/// 16 GiB) with `free_cpu` and all their memory free.
fn room(count: u32, free_cpu: u64) -> Option<ClusterRoom> {
    Some(ClusterRoom::new(
        vec![(Resources::new(4000, 16 << 30), Default::default())],
        [RoomGroup {
            class: 0,
            free: Resources::new(free_cpu, 16 << 30),
            count,
        }],
    ))
}

#[test]
fn jobs_are_split_by_what_machines_hold_not_by_summed_capacity() {
    let mut s = state(&[("east-a", "east", 4), ("west-a", "west", 4)]);
    // east-a has 3 of 4 cpu taken on each machine: 4 cpu unclaimed,
    // summed, but in 1-cpu slivers. west-a is empty.
    s.registry_mut().heartbeat(
        "east-a",
        Heartbeat {
            allocated: Resources::new(12_000, 0),
            room: room(4, 1000),
            ..Default::default()
        },
    );
    s.registry_mut().heartbeat(
        "west-a",
        Heartbeat {
            room: room(4, 4000),
            ..Default::default()
        },
    );
    assert_eq!(s.registry().entries()[0].summary.unclaimed().cpu.0, 4000);
    // Two 2-cpu tasks that would rather run east: the sum says east-a
    // holds both, its machines hold neither. They go west, not there and
    // back.
    submit(&mut s, "big", 2, 2000, Some("east"), 0);
    assert_eq!(pass(&mut s, 100), [("big".into(), "west-a".into(), 2)]);
    // 1-cpu tasks fit the slivers: four east, the rest west.
    submit(&mut s, "small", 6, 1000, Some("east"), 0);
    assert_eq!(
        pass(&mut s, 100),
        [
            ("small".into(), "east-a".into(), 4),
            ("small".into(), "west-a".into(), 2)
        ]
    );
    // west-a reports its machines empty still: it had not taken the tasks
    // in (seq 0). They take their room all the same: one machine holds
    // both 2-cpu tasks, one the two 1-cpu tasks (2 cpu left), two are
    // empty. Three 3-cpu tasks: 10 cpu unclaimed, summed, would hold them;
    // the two empty machines hold two. (east-a is out of cpu.)
    s.registry_mut().heartbeat(
        "west-a",
        Heartbeat {
            room: room(4, 4000),
            ..Default::default()
        },
    );
    submit(&mut s, "three", 3, 3000, None, 0);
    assert_eq!(pass(&mut s, 100), [("three".into(), "west-a".into(), 2)]);
    assert_eq!(
        s.queue.reason(s.jobs["three"].job.id),
        Some("0/2 clusters can take it: 1 cluster out of cpu, 1 no machine with room for it")
    );
}

#[test]
fn freed_capacity_gets_the_rest_of_a_job() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "a", 5, 1000, None, 0);
    assert_eq!(pass(&mut s, 100), [("a".into(), "east-a".into(), 4)]);
    assert!(pass(&mut s, 100).is_empty());
    let east = s.registry().id("east-a").unwrap();
    // The agent took the batch in and placed the four; then they finished.
    let improved = s.registry_mut().heartbeat(
        "east-a",
        Heartbeat {
            allocated: Resources::new(4000, 4 << 30),
            seq_seen: 4,
            ..Default::default()
        },
    );
    assert_eq!(improved, Some(false));
    for i in 0..4 {
        let r = pb::TaskReport {
            job: "a".into(),
            index: i,
            state: pb::TaskState::Succeeded as i32,
            machine: "m".into(),
            exit_code: Some(0),
            reason: String::new(),
            gpus: String::new(),
        };
        let c = s.report_change(east, &r).unwrap();
        s.apply(vec![c], 5);
    }
    let improved = s.registry_mut().heartbeat(
        "east-a",
        Heartbeat {
            seq_seen: 4,
            ..Default::default()
        },
    );
    assert_eq!(improved, Some(true));
    s.mark_rescan();
    assert_eq!(pass(&mut s, 100), [("a".into(), "east-a".into(), 1)]);
}

#[test]
fn a_resubmission_with_the_same_id_is_skipped_and_another_is_refused() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "a", 1, 100, None, 0);
    let spec = s.job("a").unwrap().job.spec.clone();
    assert!(s
        .check_submission(vec![spec.clone()], "sub", 0)
        .unwrap()
        .is_empty());
    let mut other = spec.clone();
    other.tasks += 1;
    let err = s.check_submission(vec![spec], "other", 0).unwrap_err();
    let crate::error::ServiceError::AlreadyExists(err) = err else {
        panic!("{err:?}")
    };
    assert_eq!(err.field, "jobs[0].name");
    // The same id with another spec: refused, naming what differs.
    let err = s.check_submission(vec![other], "sub", 0).unwrap_err();
    let crate::error::ServiceError::SubmissionReused(err) = err else {
        panic!("{err:?}")
    };
    assert_eq!(err.field, "jobs[0].tasks");
}

#[test]
fn load_rebuilds_pending_counts_from_task_keys() {
    let mut s = state(&[("east-a", "east", 10)]);
    submit(&mut s, "web", 5, 100, None, 0);
    pass(&mut s, 2);
    let job = serde_json::to_vec(&s.job("web").unwrap().record).unwrap();
    let task = |i: u32| {
        let t = &s.job("web").unwrap().tasks[i as usize];
        KeyValue {
            key: s.keys().task("web", i),
            value: serde_json::to_vec(&s.record_of(t)).unwrap(),
            mod_revision: 2,
            create_revision: 2,
        }
    };
    let tasks = [task(0), task(1)];
    let mut fresh = state(&[("east-a", "east", 10)]);
    fresh
        .load(
            &[KeyValue {
                key: "/t/jobs/web".into(),
                value: job,
                mod_revision: 1,
                create_revision: 1,
            }],
            &tasks,
        )
        .unwrap();
    let j = fresh.job("web").unwrap();
    assert_eq!(fresh.pending_of(j), 3);
    assert_eq!(fresh.pending_tasks(), 3);
    assert_eq!(j.tasks[0].state, TaskState::Assigned);
    assert_eq!(j.tasks[0].rev, 2);
    assert_eq!(j.events.back().unwrap().kind, EventKind::Recovered);
}

/// Applies a cluster's report of task `index` of `job` as if etcd took it.
fn report(
    s: &mut State,
    cluster: &str,
    job: &str,
    index: u32,
    state: pb::TaskState,
    code: Option<i32>,
) {
    let id = s.registry().id(cluster).unwrap();
    let r = pb::TaskReport {
        job: job.into(),
        index,
        state: state as i32,
        machine: "m0".into(),
        exit_code: code,
        reason: String::new(),
        gpus: String::new(),
    };
    if let Some(c) = s.report_change(id, &r) {
        s.apply(vec![c], 3);
    }
}

fn task(s: &State, job: &str, index: usize) -> TaskEntry {
    s.job(job).unwrap().tasks[index].clone()
}

/// Issue 12: a node's reason (the kernel killed the task for memory) is
/// told in the task's reason, with the exit code.
#[test]
fn a_failure_the_node_explains_carries_its_reason() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "hog", 1, 1000, None, 0);
    pass(&mut s, 10);
    report(&mut s, "east-a", "hog", 0, pb::TaskState::Running, None);
    let id = s.registry().id("east-a").unwrap();
    let r = pb::TaskReport {
        job: "hog".into(),
        index: 0,
        state: pb::TaskState::Failed as i32,
        machine: "m0".into(),
        exit_code: Some(137),
        reason: "killed for exceeding its memory request of 64Mi (cgroup v2)".into(),
        gpus: String::new(),
    };
    let c = s.report_change(id, &r).unwrap();
    s.apply(vec![c], 3);
    let t = task(&s, "hog", 0);
    assert!(
        t.reason.contains(
            "failed: killed for exceeding its memory request of 64Mi (cgroup v2) (exit code 137)"
        ),
        "{}",
        t.reason
    );
}

#[test]
fn a_failed_task_waits_out_its_backoff_then_goes_again_until_its_attempts_are_used() {
    // Default policy: on-failure, 3 attempts, backoff 1 s doubling.
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "web", 1, 1000, None, 0);
    pass(&mut s, 10);
    for attempt in 1..=3u32 {
        report(&mut s, "east-a", "web", 0, pb::TaskState::Running, None);
        assert_eq!(task(&s, "web", 0).attempts, attempt);
        report(&mut s, "east-a", "web", 0, pb::TaskState::Failed, Some(1));
        let t = task(&s, "web", 0);
        if attempt < 3 {
            // Pending, not yet in the queue: nothing to assign until the
            // backoff (1 s, then 2 s) is over.
            assert_eq!(t.state, TaskState::Pending);
            let wait = t.retry_at.unwrap() - crate::records::now_unix_ms();
            let want = 1000 << (attempt - 1);
            assert!(wait > want - 200 && wait <= want, "{wait}");
            assert!(
                t.reason.contains(&format!("attempt {attempt} of 3")),
                "{}",
                t.reason
            );
            assert!(pass(&mut s, 10).is_empty());
            assert_eq!(s.pending_tasks(), 1);
            // Time passes (the retry time is moved, as the clock would).
            let (at, id, i) = *s.waiting.first().unwrap();
            s.waiting.remove(&(at, id, i));
            s.waiting.insert((0, id, i));
            assert!(s.release_due());
            assert_eq!(pass(&mut s, 10).len(), 1);
        } else {
            assert_eq!(t.state, TaskState::Failed);
            assert!(t.reason.contains("attempts are used up"), "{}", t.reason);
            assert!(s.job("web").unwrap().is_finished());
        }
    }
    assert_eq!(
        State::job_state(s.job("web").unwrap()),
        pb::JobState::Failed
    );
}

#[test]
fn a_lost_task_starts_again_even_under_never_and_a_failure_does_not() {
    let mut s = state(&[("east-a", "east", 1)]);
    let spec = JobSpec {
        name: "batch".into(),
        tasks: 2,
        request: Resources::new(100, 1 << 20),
        priority: 0,
        locality: None,
        constraints: Default::default(),
        command: vec!["true".to_string()],
        restart: sched_core::lifecycle::RestartSpec {
            policy: Some(sched_core::lifecycle::RestartMode::Never),
            ..Default::default()
        },
        ttl_after_finished: None,
        tenant: sched_core::job::DEFAULT_TENANT.to_string(),
        band: None,
    };
    for r in s.check_submission(vec![spec], "sub", 0).unwrap() {
        s.insert_job(r, 1);
    }
    pass(&mut s, 10);
    report(&mut s, "east-a", "batch", 0, pb::TaskState::Running, None);
    report(&mut s, "east-a", "batch", 1, pb::TaskState::Running, None);
    report(&mut s, "east-a", "batch", 0, pb::TaskState::Failed, Some(2));
    report(&mut s, "east-a", "batch", 1, pb::TaskState::Lost, None);
    let failed = task(&s, "batch", 0);
    assert_eq!(
        (failed.state, failed.exit_code),
        (TaskState::Failed, Some(2))
    );
    assert!(
        failed.reason.contains("restart policy is never"),
        "{}",
        failed.reason
    );
    let lost = task(&s, "batch", 1);
    assert_eq!((lost.state, lost.cluster), (TaskState::Pending, None));
    assert!(lost.retry_at.is_some());
}

#[test]
fn cancel_ends_what_is_not_on_a_machine_at_once_and_is_refused_once_finished() {
    let mut s = state(&[("east-a", "east", 1)]);
    // 4 cpu: 4 tasks of 1 cpu are assigned, 2 stay pending.
    submit(&mut s, "web", 6, 1000, None, 0);
    pass(&mut s, 10);
    report(&mut s, "east-a", "web", 0, pb::TaskState::Running, None);
    assert_eq!(s.pending_tasks(), 2);
    let (record, _) = s.cancel_write("web").unwrap().unwrap();
    let clusters = s.apply_cancel(record, 5);
    assert_eq!(clusters.len(), 1);
    // Pending and assigned: cancelled now; the running one is stopping.
    let states: Vec<TaskState> = s
        .job("web")
        .unwrap()
        .tasks
        .iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states[0], TaskState::Running);
    assert!(
        states[1..].iter().all(|&t| t == TaskState::Cancelled),
        "{states:?}"
    );
    assert_eq!(s.pending_tasks(), 0);
    assert!(!s.job("web").unwrap().is_finished());
    // Again: nothing to write.
    assert!(s.cancel_write("web").unwrap().is_none());
    // Its node stops it: it ends cancelled, not failed, and is not retried.
    report(&mut s, "east-a", "web", 0, pb::TaskState::Failed, Some(143));
    assert_eq!(task(&s, "web", 0).state, TaskState::Cancelled);
    assert!(s.job("web").unwrap().is_finished());
    assert_eq!(
        State::job_state(s.job("web").unwrap()),
        pb::JobState::Cancelled
    );

    // A succeeded job cannot be cancelled (a fresh cluster: web still holds
    // the capacity its agent has not reported free).
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "done", 1, 100, None, 0);
    pass(&mut s, 10);
    report(
        &mut s,
        "east-a",
        "done",
        0,
        pb::TaskState::Succeeded,
        Some(0),
    );
    let e = s.cancel_write("done").unwrap_err();
    assert!(matches!(e, ServiceError::FailedPrecondition(_)), "{e}");
    assert_eq!(
        State::job_state(s.job("done").unwrap()),
        pb::JobState::Succeeded
    );
}

#[test]
fn a_cancelled_jobs_tasks_read_back_cancelled_and_delete_frees_the_name() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "web", 3, 1000, None, 0);
    pass(&mut s, 10);
    let (record, _) = s.cancel_write("web").unwrap().unwrap();
    s.apply_cancel(record.clone(), 5);
    // A new leader reads the job (cancelled) and the tasks' keys (still
    // `assigned`): they are cancelled.
    let mut fresh = state(&[("east-a", "east", 1)]);
    let job = KeyValue {
        key: fresh.keys().job("web"),
        value: serde_json::to_vec(&record).unwrap(),
        mod_revision: 5,
        create_revision: 1,
    };
    let tasks: Vec<KeyValue> = (0..3u32)
        .map(|i| KeyValue {
            key: fresh.keys().task("web", i),
            value: serde_json::to_vec(&bare_record(TaskState::Assigned, Some("east-a"))).unwrap(),
            mod_revision: 2,
            create_revision: 2,
        })
        .collect();
    fresh.load(&[job], &tasks).unwrap();
    let j = fresh.job("web").unwrap();
    assert!(j.tasks.iter().all(|t| t.state == TaskState::Cancelled));
    assert!(j.is_finished());
    assert_eq!(fresh.pending_tasks(), 0);

    // Delete: the job's key, every task key and every event key go; the
    // name is free.
    let writes = s.delete_writes("web", false).unwrap();
    assert_eq!(writes.len(), 3);
    assert_eq!(writes[1].op, sched_store::Op::DeletePrefix);
    assert_eq!(writes[2], Write::delete_prefix("/t/events/web/"));
    s.apply_delete("web", "test");
    assert!(s.job("web").is_none());
    submit(&mut s, "web", 1, 100, None, 0);
    assert_eq!(s.job("web").unwrap().tasks.len(), 1);
    // An unfinished job needs force.
    let e = s.delete_writes("web", false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(s.delete_writes("web", true).is_ok());
}

#[test]
fn finished_jobs_expire_after_their_ttl() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "a", 1, 100, None, 0);
    submit(&mut s, "b", 1, 100, None, 0);
    pass(&mut s, 10);
    report(&mut s, "east-a", "a", 0, pb::TaskState::Succeeded, Some(0));
    let done = s.job("a").unwrap().finished_at.unwrap();
    // The policy's default: 24 h.
    assert!(s.expired(done + 86_399_000, 10).is_empty());
    assert_eq!(s.expired(done + 86_400_000, 10), ["a"]);
    // b is not finished: never expired.
    assert!(s.expired(i64::MAX, 10).iter().all(|n| n != "b"));
}

#[test]
fn tasks_are_taken_back_from_a_cluster_that_stays_down() {
    let mut s = state(&[("east-a", "east", 1), ("west-a", "west", 1)]);
    submit(&mut s, "web", 2, 1000, Some("east"), 0);
    pass(&mut s, 10);
    report(&mut s, "east-a", "web", 0, pb::TaskState::Running, None);
    let east = s.registry().id("east-a").unwrap();
    let now = std::time::Instant::now();
    // Up: nothing to take back.
    assert!(s.gone_clusters(now, now).is_empty());
    s.registry_mut()
        .expire(now + std::time::Duration::from_secs(6));
    // Down for 6 s (heartbeat timeout 5 s + policy 60 s not passed).
    assert!(s
        .gone_clusters(now + std::time::Duration::from_secs(6), now)
        .is_empty());
    let later = now + std::time::Duration::from_secs(66);
    // Both missed their heartbeats; west-a holds nothing to take back.
    let west = s.registry().id("west-a").unwrap();
    assert_eq!(s.gone_clusters(later, now), [east, west]);
    assert!(s.take_back_changes(west, "down").is_empty());
    let changes = s.take_back_changes(east, "down");
    assert_eq!(changes.len(), 2);
    s.apply(changes, 9);
    // The running one counts as lost (an attempt, a backoff); the assigned
    // one goes back at once.
    let t0 = task(&s, "web", 0);
    assert_eq!(
        (t0.state, t0.cluster, t0.attempts),
        (TaskState::Pending, None, 1)
    );
    assert!(t0.retry_at.is_some());
    let t1 = task(&s, "web", 1);
    assert_eq!(
        (t1.state, t1.cluster, t1.retry_at),
        (TaskState::Pending, None, None)
    );
    // Swept: not looked at again until it comes back.
    s.registry_mut().mark_swept(east);
    s.registry_mut().mark_swept(west);
    assert!(s.gone_clusters(later, now).is_empty());
    // The cluster's resync says it holds nothing of web any more.
    let batch = s.assigned_to(east);
    assert!(batch.resync);
    assert_eq!(batch.held.len(), 1);
    assert!(batch.held[0].indices.is_empty());
}

#[test]
fn a_machine_shape_not_reported_for_its_ttl_is_forgotten() {
    // A node started once with a mistyped --cpu 1000 made a shape that
    // jobs were sized against for ever.
    let mut s = state(&[("east-a", "east", 2)]);
    let huge = MachineClassRecord {
        name: "typo".into(),
        capacity: Resources::new(1_000_000, 16 << 30).into(),
        labels: Default::default(),
        count: 1,
        last_seen_unix_ms: 0,
    };
    let id = s.registry().id("east-a").unwrap();
    let mut record = s.registry().entries()[id.0 as usize].record.clone();
    record.classes.push(huge);
    s.registry_mut().register(record.clone(), true);
    let big = |s: &State| {
        let spec = JobSpec {
            name: "big".into(),
            tasks: 1,
            request: Resources::new(500_000, 1 << 30),
            priority: 0,
            locality: None,
            constraints: Default::default(),
            command: vec!["true".to_string()],
            restart: Default::default(),
            ttl_after_finished: None,
            tenant: sched_core::job::DEFAULT_TENANT.to_string(),
            band: None,
        };
        s.check_submission(vec![spec], "sub", 0)
    };
    assert!(big(&s).is_ok());
    // The node comes back with its real capacity: the shape is remembered
    // (machines away for a while keep their jobs admitted) ...
    record.classes.pop();
    s.registry_mut().register(record, true);
    let now = crate::records::now_unix_ms();
    assert!(s.registry_mut().expire_classes(now, 3_600_000).is_empty());
    assert!(big(&s).is_ok());
    // ... until no cluster has reported it for the ttl.
    let changed = s.registry_mut().expire_classes(now + 3_600_001, 3_600_000);
    assert_eq!(changed, ["east-a"]);
    let e = big(&s).unwrap_err();
    let crate::error::ServiceError::Invalid(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.field, "jobs[0].resources.cpu", "{e}");
    // The shapes reported now stay.
    let small = s.registry().entries()[id.0 as usize]
        .record
        .seen_classes
        .len();
    assert_eq!(small, 1);
}

/// Events reach watchers only once stored; a resume gives every stored event
/// after the cursor, and refuses a cursor from before what a job dropped.
#[test]
fn events_are_replayed_after_a_cursor_and_expire_when_dropped() {
    use super::history::{ResumeError, EVENTS_PER_JOB};
    let mut s = state(&[("east-a", "east", 10)]);
    submit(&mut s, "web", 1, 100, None, 0);
    s.push_job_event("web", EventKind::Submitted, "accepted".into());
    let (replay, mut rx) = s.resume("web", Some(0)).unwrap();
    assert!(replay.is_empty(), "nothing stored yet: {replay:?}");
    let b = s.take_batch();
    assert_eq!(b.put.len(), 1);
    assert!(rx.try_recv().is_err(), "not sent before it is stored");
    s.batch_stored();
    let live = rx.try_recv().unwrap();
    assert_eq!((live.kind, live.cursor), (EventKind::Submitted, 1));
    for i in 0..EVENTS_PER_JOB {
        s.push_task_event("web", EventKind::Placed, format!("{i}"), vec![0]);
    }
    let b = s.take_batch();
    // The first event was dropped; its key is deleted.
    assert_eq!(b.delete, vec![("web".to_string(), 1)]);
    assert_eq!(b.put.len(), EVENTS_PER_JOB);
    s.batch_stored();
    let (replay, _) = s.resume("web", Some(1)).unwrap();
    assert_eq!(replay.len(), EVENTS_PER_JOB);
    assert_eq!(replay[0].cursor, 2);
    assert_eq!(replay[0].tasks, vec![0]);
    let (replay, _) = s.resume("web", Some(60)).unwrap();
    assert_eq!(replay.first().map(|e| e.cursor), Some(61));
    assert!(matches!(
        s.resume("web", Some(0)),
        Err(ResumeError::Expired { dropped: 1, .. })
    ));
    assert!(matches!(
        s.resume("nope", None),
        Err(ResumeError::NotFound(_))
    ));
    assert!(matches!(
        s.resume("web", Some(10_000)),
        Err(ResumeError::Ahead { .. })
    ));
}

/// A new leader reads the history back: cursors go on after the stored
/// ones, and events of a job that no longer exists are deleted.
#[test]
fn stored_events_come_back_with_their_job() {
    let mut s = state(&[("east-a", "east", 10)]);
    let mut kept = Event::new("web", EventKind::Submitted, "accepted".into());
    kept.cursor = 7;
    let mut orphan = Event::new("gone", EventKind::Submitted, "accepted".into());
    orphan.cursor = 8;
    s.load_events(vec![kept.clone(), orphan], 20, 3);
    submit(&mut s, "web", 1, 100, None, 0);
    let j = s.job("web").unwrap();
    assert_eq!(j.events.iter().cloned().collect::<Vec<_>>(), vec![kept]);
    s.events_loaded_for_tests();
    s.push_job_event("web", EventKind::Recovered, "back".into());
    let b = s.take_batch();
    assert_eq!(b.gone, vec!["gone".to_string()]);
    assert_eq!(b.put[0].cursor, 20);
    assert_eq!(b.next, 21);
}

/// A store for the write-path tests: the task keys the changes wrote, at
/// increasing revisions.
#[derive(Default)]
struct Written {
    keys: BTreeMap<String, (Vec<u8>, Revision)>,
    rev: Revision,
    /// Task keys put, over all commits.
    puts: usize,
}

impl Written {
    /// Commits the changes' writes (in one commit: the tasks' own keys and
    /// one assignment record per group, as the engine does) and applies
    /// them, then deletes the records nothing stands on.
    fn commit(&mut self, s: &mut State, changes: Vec<TaskChange>) {
        self.rev += 1;
        let mut writes: Vec<sched_store::Write> =
            changes.iter().filter_map(|c| c.write.clone()).collect();
        let mut groups: BTreeMap<(String, u32), Vec<TaskChange>> = BTreeMap::new();
        for c in changes.iter().filter(|c| c.assignment.is_some()) {
            groups
                .entry((c.job.clone(), c.assignment.unwrap()))
                .or_default()
                .push(c.clone());
        }
        writes.extend(groups.values().filter_map(|g| s.assignment_write(g)));
        for w in &writes {
            let sched_store::Op::Put(value) = &w.op else {
                panic!("task changes only put: {w:?}");
            };
            let stored = self.keys.get(&w.key).map_or(0, |(_, rev)| *rev);
            let expected = match w.expect {
                sched_store::Expect::Absent => 0,
                sched_store::Expect::ModRevision(r) => r,
                other => panic!("task writes are guarded: {other:?}"),
            };
            assert_eq!(stored, expected, "the guard of {} holds", w.key);
            self.keys.insert(w.key.clone(), (value.clone(), self.rev));
            self.puts += 1;
        }
        s.apply(changes, self.rev);
        for k in s.take_garbage() {
            self.keys.remove(&k);
        }
    }

    fn assignment(&self, key: &str) -> crate::records::AssignmentRecord {
        serde_json::from_slice(&self.keys[key].0).unwrap()
    }

    fn kvs(&self) -> Vec<KeyValue> {
        self.keys
            .iter()
            .map(|(k, (v, rev))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *rev,
                create_revision: *rev,
            })
            .collect()
    }

    fn record(&self, key: &str) -> TaskRecord {
        serde_json::from_slice(&self.keys[key].0).unwrap()
    }
}

/// A task record with only a state and a cluster.
fn bare_record(state: TaskState, cluster: Option<&str>) -> TaskRecord {
    TaskRecord {
        state,
        cluster: cluster.map(str::to_string),
        machine: None,
        gpus: String::new(),
        exit_code: None,
        handed_back: Vec::new(),
        attempts: 0,
        retry_at_unix_ms: None,
        reason: String::new(),
        ended_unix_ms: None,
        preempted: false,
    }
}

fn task_report(index: u32, state: pb::TaskState, code: Option<i32>) -> pb::TaskReport {
    pb::TaskReport {
        job: "web".into(),
        index,
        state: state as i32,
        machine: "m0".into(),
        exit_code: code,
        reason: String::new(),
        gpus: String::new(),
    }
}

/// Issue 15: one task's happy path writes twice: the pass's assignment
/// record (one for all the tasks it hands a cluster of a job) and its key
/// when it succeeds; placed and running are kept in memory (and told in
/// events). The record is deleted once no task stands on it.
#[test]
fn the_happy_path_writes_twice_and_leaves_the_task_key() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "web", 1, 1000, None, 0);
    let mut store = Written::default();
    let plan = s.plan(10);
    let changes: Vec<TaskChange> = plan.iter().flat_map(|a| s.assignment_changes(a)).collect();
    store.commit(&mut s, changes);
    let east = s.registry().id("east-a").unwrap();
    let key = s.keys().task("web", 0);
    let record = s.keys().assignment("web", 1);
    assert!(!store.keys.contains_key(&key));
    let a = store.assignment(&record);
    assert_eq!(
        (a.cluster.as_str(), a.tasks.as_slice()),
        ("east-a", &[[0, 0]][..])
    );
    for state in [pb::TaskState::Placed, pb::TaskState::Running] {
        let c = s.report_change(east, &task_report(0, state, None)).unwrap();
        assert!(c.write.is_none(), "{state:?} is not written");
        store.commit(&mut s, vec![c]);
    }
    let t = task(&s, "web", 0);
    assert_eq!((t.state, t.attempts), (TaskState::Running, 1));
    assert_eq!(t.machine.as_deref(), Some("m0"));
    // Still only the record, before the attempt.
    assert!(!store.keys.contains_key(&key));
    let done = task_report(0, pb::TaskState::Succeeded, Some(0));
    let c = s.report_change(east, &done).unwrap();
    assert!(c.write.is_some());
    store.commit(&mut s, vec![c]);
    let stored = store.record(&key);
    assert_eq!((stored.state, stored.attempts), (TaskState::Succeeded, 1));
    assert_eq!(stored.machine.as_deref(), Some("m0"));
    assert_eq!(store.puts, 2);
    assert!(
        !store.keys.contains_key(&record),
        "the spent record is deleted"
    );
    // The events tell every step all the same.
    let kinds: Vec<EventKind> = s
        .job("web")
        .unwrap()
        .events
        .iter()
        .map(|e| e.kind)
        .collect();
    for kind in [
        EventKind::Assigned,
        EventKind::Placed,
        EventKind::Running,
        EventKind::Succeeded,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
}

/// A new leader reads `assigned` back; the cluster's resync tells it the
/// task runs, and the attempt is counted once, as the old leader did; the
/// task's end and a failure's restart rules see the same attempts.
#[test]
fn a_new_leader_learns_progress_from_the_resync_with_the_same_attempts() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "web", 2, 1000, None, 0);
    let mut store = Written::default();
    let plan = s.plan(10);
    let changes: Vec<TaskChange> = plan.iter().flat_map(|a| s.assignment_changes(a)).collect();
    store.commit(&mut s, changes);
    let east = s.registry().id("east-a").unwrap();
    // Task 0 fails once (its key is written: pending, 1 attempt), is
    // assigned again and runs; task 1 runs.
    for r in [
        task_report(0, pb::TaskState::Running, None),
        task_report(0, pb::TaskState::Failed, Some(1)),
        task_report(1, pb::TaskState::Running, None),
    ] {
        let c = s.report_change(east, &r).unwrap();
        store.commit(&mut s, vec![c]);
    }
    // Its backoff passes (the retry time is moved, as the clock would).
    let (at, id, i) = *s.waiting.first().unwrap();
    s.waiting.remove(&(at, id, i));
    s.waiting.insert((0, id, i));
    assert!(s.release_due());
    let plan = s.plan(10);
    let changes: Vec<TaskChange> = plan.iter().flat_map(|a| s.assignment_changes(a)).collect();
    assert_eq!(changes.len(), 1);
    store.commit(&mut s, changes);
    let c = s
        .report_change(east, &task_report(0, pb::TaskState::Running, None))
        .unwrap();
    store.commit(&mut s, vec![c]);
    let old: Vec<(TaskState, u32)> = (0..2)
        .map(|i| (task(&s, "web", i).state, task(&s, "web", i).attempts))
        .collect();
    assert_eq!(old, [(TaskState::Running, 2), (TaskState::Running, 1)]);

    // The new leader reads the store back: both are `assigned` there.
    let mut fresh = state(&[("east-a", "east", 1)]);
    let job = KeyValue {
        key: "/t/jobs/web".into(),
        value: serde_json::to_vec(&s.job("web").unwrap().record).unwrap(),
        mod_revision: 1,
        create_revision: 1,
    };
    fresh.load(&[job], &store.kvs()).unwrap();
    for i in 0..2 {
        assert_eq!(task(&fresh, "web", i).state, TaskState::Assigned);
    }
    // Its resync lists both as the cluster's, to report.
    let batch = fresh.assigned_to(east);
    assert_eq!(batch.assignments[0].indices, [0, 1]);
    // The cluster's resync: where each placement stands (twice: a second
    // session's resync changes nothing).
    for _ in 0..2 {
        for i in 0..2 {
            if let Some(c) =
                fresh.report_change(east, &task_report(i, pb::TaskState::Running, None))
            {
                assert!(c.write.is_none());
                store.commit(&mut fresh, vec![c]);
            }
        }
    }
    let new: Vec<(TaskState, u32)> = (0..2)
        .map(|i| {
            (
                task(&fresh, "web", i).state,
                task(&fresh, "web", i).attempts,
            )
        })
        .collect();
    assert_eq!(new, old);
    // The ends are written with the attempts each leader would write.
    let c = fresh
        .report_change(east, &task_report(1, pb::TaskState::Succeeded, Some(0)))
        .unwrap();
    store.commit(&mut fresh, vec![c]);
    let stored = store.record(&fresh.keys().task("web", 1));
    assert_eq!((stored.state, stored.attempts), (TaskState::Succeeded, 1));
    let c = fresh
        .report_change(east, &task_report(0, pb::TaskState::Failed, Some(1)))
        .unwrap();
    store.commit(&mut fresh, vec![c]);
    let stored = store.record(&fresh.keys().task("web", 0));
    assert_eq!((stored.state, stored.attempts), (TaskState::Pending, 2));
    assert!(
        stored.reason.contains("attempt 2 of 3"),
        "{}",
        stored.reason
    );
}

/// A conflict reloads a job's tasks from the store: progress on machines,
/// in memory only, stands where the key did not change.
#[test]
fn a_reload_keeps_progress_on_machines_where_the_key_did_not_change() {
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "web", 2, 1000, None, 0);
    let mut store = Written::default();
    let plan = s.plan(10);
    let changes: Vec<TaskChange> = plan.iter().flat_map(|a| s.assignment_changes(a)).collect();
    store.commit(&mut s, changes);
    let east = s.registry().id("east-a").unwrap();
    for i in 0..2 {
        let c = s
            .report_change(east, &task_report(i, pb::TaskState::Running, None))
            .unwrap();
        store.commit(&mut s, vec![c]);
    }
    // Another writer wrote task 1's key (pending), after the record.
    let key = s.keys().task("web", 1);
    let other = bare_record(TaskState::Pending, None);
    store.rev += 1;
    store
        .keys
        .insert(key, (serde_json::to_vec(&other).unwrap(), store.rev));
    let items = store.kvs();
    s.reload_tasks("web", &items).unwrap();
    let t = task(&s, "web", 0);
    assert_eq!((t.state, t.attempts), (TaskState::Running, 1));
    assert_eq!(task(&s, "web", 1).state, TaskState::Pending);
}

/// A pass's scattered indices go in as many records as keep each under
/// `RANGES_PER_RECORD` runs; a new leader reads every task back assigned,
/// and a task whose key is newer than its record is what its key says.
#[test]
fn assignment_records_split_by_runs_and_read_back_under_newer_keys() {
    use super::transitions::RANGES_PER_RECORD;
    let runs = RANGES_PER_RECORD as u32 + 4;
    let mut s = state(&[("east-a", "east", 1)]);
    submit(&mut s, "web", runs * 2, 1, None, 0);
    let east = s.registry().id("east-a").unwrap();
    let id = s.job("web").unwrap().job.id;
    // Every other task: each is a run of its own.
    let a = sched_core::assign::Assignment {
        job: id,
        cluster: east,
        indices: (0..runs).map(|i| i * 2).collect(),
        handed_back: Vec::new(),
    };
    let changes = s.assignment_changes(&a);
    let numbers: std::collections::BTreeSet<u32> =
        changes.iter().filter_map(|c| c.assignment).collect();
    assert_eq!(numbers.into_iter().collect::<Vec<_>>(), [1, 2]);
    let mut store = Written::default();
    store.commit(&mut s, changes);
    assert_eq!(store.puts, 2);
    let first = store.assignment(&s.keys().assignment("web", 1));
    assert_eq!(first.tasks.len(), RANGES_PER_RECORD);
    assert_eq!(first.tasks[1], [2, 2]);
    // Task 2 is handed back: its key (pending) is newer than record 1.
    let back = pb::HandBack {
        job: "web".into(),
        indices: vec![2],
        reason: "no room".into(),
    };
    let changes = s.hand_back_changes(east, &back);
    assert_eq!(changes.len(), 1);
    store.commit(&mut s, changes);
    let mut fresh = state(&[("east-a", "east", 1)]);
    let job = KeyValue {
        key: "/t/jobs/web".into(),
        value: serde_json::to_vec(&s.job("web").unwrap().record).unwrap(),
        mod_revision: 1,
        create_revision: 1,
    };
    fresh.load(&[job], &store.kvs()).unwrap();
    for i in 0..runs * 2 {
        let (was, now) = (task(&s, "web", i as usize), task(&fresh, "web", i as usize));
        assert_eq!(now.state, was.state, "task {i}");
        assert_eq!(now.version(), was.version(), "task {i}");
    }
    assert_eq!(task(&fresh, "web", 2).state, TaskState::Pending);
    assert_eq!(task(&fresh, "web", 4).state, TaskState::Assigned);
    assert_eq!(fresh.pending_tasks(), u64::from(runs) + 1);
    // Its next record does not reuse a number.
    assert_eq!(fresh.job("web").unwrap().next_assignment, 3);
}

#[test]
fn index_ranges_join_consecutive_indices() {
    use crate::records::index_ranges;
    assert_eq!(index_ranges([0, 1, 2, 5, 7, 8]), [[0, 2], [5, 5], [7, 8]]);
    assert_eq!(index_ranges([3, 2]), [[3, 3], [2, 2]]);
    assert_eq!(index_ranges([u32::MAX, 0]), [[u32::MAX, u32::MAX], [0, 0]]);
    assert!(index_ranges([]).is_empty());
}
