//! The node agent's task runner with real processes: every exit is
//! reported, however fast the task.

use std::collections::BTreeMap;
use std::time::Duration;

use local_agent::limits::Limits;
use local_agent::node::run_as::{Identity, RunAs, DEFAULT_UID_RANGE};
use local_agent::node::tasks::Tasks;
use local_agent::node::NodeConfig;
use sched_proto::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_exits_at_once_is_reported_finished() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        agent: String::new(),
        name: "n1".into(),
        machines: Vec::new(),
        work_dir: dir.path().to_path_buf(),
        hollow: None,
        lease: Duration::from_secs(60),
        listen: String::new(),
        advertise: None,
        supervisor: env!("CARGO_BIN_EXE_local-agent").into(),
        tls: None,
        insecure: false,
        // As root, each of the 200 gets a uid of its own, given back when
        // it ends.
        run_as: match Identity::current() {
            i if i.uid == 0 => RunAs::Dynamic(DEFAULT_UID_RANGE),
            i => RunAs::Myself(i),
        },
        limits: Limits::rlimits(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks = Tasks::new(&config, tx).unwrap();
    // Found by the quick start in CI (4 of 600 tasks stuck `running`): the
    // exit of a supervisor that finished before the runner had recorded
    // the task found no entry and was dropped. The window is the runner's
    // thread being preempted between the two, so on an idle machine the
    // old code usually passed this; with 20 ms put into the window it lost
    // every exit. Now the exit is awaited only once the task is recorded.
    const N: u32 = 200;
    for index in 0..N {
        tasks.start(pb::TaskStart {
            job: "quick".into(),
            index,
            machine: "m1".into(),
            command: vec!["true".into()],
            request: None,
            attempt: 1,
            cluster: "c1".into(),
            gpus: Vec::new(),
        });
    }
    let mut last: BTreeMap<u32, i32> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while last
        .values()
        .filter(|&&s| s == pb::TaskState::Succeeded as i32)
        .count()
        < N as usize
    {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(t)) => {
                last.insert(t.index, t.state);
            }
            _ => break,
        }
    }
    let unfinished: Vec<u32> = (0..N)
        .filter(|i| last.get(i) != Some(&(pb::TaskState::Succeeded as i32)))
        .collect();
    assert!(
        unfinished.is_empty(),
        "never reported finished: {unfinished:?}"
    );
    assert!(tasks
        .known()
        .iter()
        .all(|t| t.state == pb::TaskState::Succeeded as i32));
}
