//! The node agent binary (`local-agent node`, real task processes) against
//! a stand-in local agent: a deleted job is forgotten (stopped, moved to
//! the trash, free to start again under its name), old directories are
//! swept after the retention, and a node cut off from its local agent
//! fences its tasks and reports them lost when it registers again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sched_proto::pb;
use sched_proto::pb::machines_server::{Machines, MachinesServer};
use sched_proto::pb::node_client::NodeClient;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How long any one condition may take to come true.
const PATIENCE: Duration = Duration::from_secs(30);

type WorkSender = mpsc::Sender<Result<pb::WorkBatch, Status>>;

/// The local agent's side of one node: passes on what the node says, hands
/// each work stream to the test, and can play dead.
struct StandIn {
    retention_ms: u64,
    down: AtomicBool,
    registrations: mpsc::UnboundedSender<pb::RegisterNodeRequest>,
    reports: mpsc::UnboundedSender<pb::NodeTask>,
    /// Reports the node tried to send while the stand-in played dead.
    refused: mpsc::UnboundedSender<pb::NodeTask>,
    streams: mpsc::UnboundedSender<WorkSender>,
}

impl StandIn {
    fn check_up(&self) -> Result<(), Status> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the stand-in plays dead"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Machines for StandIn {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        self.check_up()?;
        let _ = self.registrations.send(request.into_inner());
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: 100,
            task_dir_retention_ms: self.retention_ms,
        }))
    }

    async fn node_heartbeat(
        &self,
        _request: Request<pb::NodeHeartbeatRequest>,
    ) -> Result<Response<pb::NodeHeartbeatResponse>, Status> {
        self.check_up()?;
        Ok(Response::new(pb::NodeHeartbeatResponse {
            register_again: false,
        }))
    }

    type WorkStream = ReceiverStream<Result<pb::WorkBatch, Status>>;

    async fn work(
        &self,
        _request: Request<pb::WorkRequest>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        self.check_up()?;
        let (tx, rx) = mpsc::channel(16);
        let _ = self.streams.send(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn node_report(
        &self,
        request: Request<pb::NodeReportRequest>,
    ) -> Result<Response<pb::NodeReportResponse>, Status> {
        let up = self.check_up();
        let to = if up.is_ok() {
            &self.reports
        } else {
            &self.refused
        };
        for t in request.into_inner().tasks {
            let _ = to.send(t);
        }
        up?;
        Ok(Response::new(pb::NodeReportResponse {}))
    }

    async fn list_machines(
        &self,
        _request: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type TaskLogsStream = ReceiverStream<Result<pb::LogChunk, Status>>;

    async fn task_logs(
        &self,
        _request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// The node agent process: stopped (SIGTERM, then SIGKILL) when dropped;
/// its log is printed if the test failed.
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = sched_proto::process::terminate(&self.child);
        // It stops its tasks, waiting up to 5 s for them.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- node agent log ---\n{log}");
        }
    }
}

struct Harness {
    stand_in: Arc<StandIn>,
    registrations: mpsc::UnboundedReceiver<pb::RegisterNodeRequest>,
    reports: Inbox,
    refused: Inbox,
    streams: mpsc::UnboundedReceiver<WorkSender>,
    /// Where the node serves task logs.
    address: String,
    /// The current session's work stream.
    work: Option<WorkSender>,
    node: Option<NodeProcess>,
    work_dir: tempfile::TempDir,
    _logs: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The node first: it stops its tasks while it can still report.
        self.node.take();
        self.shutdown.cancel();
    }
}

impl Harness {
    /// A stand-in local agent and a node agent registered with it.
    async fn start(retention_ms: u64, fence_timeout_ms: u64) -> Harness {
        let (registrations_tx, registrations) = mpsc::unbounded_channel();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (refused_tx, refused) = mpsc::unbounded_channel();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let stand_in = Arc::new(StandIn {
            retention_ms,
            down: AtomicBool::new(false),
            registrations: registrations_tx,
            reports: reports_tx,
            refused: refused_tx,
            streams: streams_tx,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MachinesServer::from_arc(stand_in.clone()))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.clone().cancelled_owned(),
                ),
        );

        let work_dir = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("node.log");
        let child = Command::new(env!("CARGO_BIN_EXE_local-agent"))
            .arg("node")
            .args([
                "--agent", &url, "--name", "n1", "--cpu", "4", "--memory", "4Gi",
            ])
            .arg("--work-dir")
            .arg(work_dir.path())
            .args(["--fence-timeout-ms", &fence_timeout_ms.to_string()])
            .env("RUST_LOG", "local_agent=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut h = Harness {
            stand_in,
            registrations,
            reports: Inbox::new(reports),
            refused: Inbox::new(refused),
            streams,
            address: String::new(),
            work: None,
            node: Some(NodeProcess { child, log }),
            work_dir,
            _logs: logs,
            shutdown,
        };
        h.address = h.registration().await.address;
        h
    }

    fn dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// The node's next registration; the work stream of its session.
    async fn registration(&mut self) -> pb::RegisterNodeRequest {
        let r = tokio::time::timeout(PATIENCE, self.registrations.recv())
            .await
            .expect("the node registers")
            .unwrap();
        let work = tokio::time::timeout(PATIENCE, self.streams.recv())
            .await
            .expect("the node opens its work stream")
            .unwrap();
        self.work = Some(work);
        r
    }

    async fn send(&self, batch: pb::WorkBatch) {
        self.work
            .as_ref()
            .expect("a session is open")
            .send(Ok(batch))
            .await
            .expect("the node follows its work stream");
    }

    /// The oldest report not taken yet that `wanted` accepts.
    async fn report(&mut self, wanted: impl Fn(&pb::NodeTask) -> bool) -> pb::NodeTask {
        self.reports.take(wanted).await
    }

    /// The node's logs of task `job`/`index`, or why not.
    async fn logs(&self, job: &str, index: u32) -> Result<String, Status> {
        let mut client = NodeClient::connect(self.address.clone()).await.unwrap();
        let mut stream = client
            .task_logs(pb::TaskLogsRequest {
                job: job.into(),
                index,
                follow: false,
                machine: String::new(),
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            out.extend(chunk.data);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Reports as they come, taken in any order.
struct Inbox {
    rx: mpsc::UnboundedReceiver<pb::NodeTask>,
    /// Received, not taken yet, oldest first.
    kept: Vec<pb::NodeTask>,
}

impl Inbox {
    fn new(rx: mpsc::UnboundedReceiver<pb::NodeTask>) -> Self {
        Inbox {
            rx,
            kept: Vec::new(),
        }
    }

    /// The oldest report, received or to come, that `wanted` accepts.
    async fn take(&mut self, wanted: impl Fn(&pb::NodeTask) -> bool) -> pb::NodeTask {
        if let Some(i) = self.kept.iter().position(&wanted) {
            return self.kept.remove(i);
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(t)) if wanted(&t) => return t,
                Ok(Some(t)) => self.kept.push(t),
                _ => panic!("no such report; received: {:?}", self.kept),
            }
        }
    }
}

fn start(job: &str, index: u32, attempt: u64, command: &[&str]) -> pb::TaskStart {
    pb::TaskStart {
        job: job.into(),
        index,
        machine: "n1".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        request: None,
        attempt,
        cluster: "c1".into(),
        gpus: Vec::new(),
    }
}

fn is(t: &pb::NodeTask, job: &str, index: u32, attempt: u64, state: pb::TaskState) -> bool {
    t.job == job && t.index == index && t.attempt == attempt && t.state == state as i32
}

fn terminal(t: &pb::NodeTask) -> bool {
    [
        pb::TaskState::Succeeded,
        pb::TaskState::Failed,
        pb::TaskState::Lost,
    ]
    .iter()
    .any(|s| t.state == *s as i32)
}

/// Waits until `cond` holds, checking every 20 ms.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn pid_in(dir: &Path) -> u32 {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    meta["pid"].as_u64().unwrap() as u32
}

/// Whether process `pid` has started a child. A task's supervisor listens
/// for SIGTERM before it starts the task: a stop sent sooner kills the
/// supervisor itself, which then leaves no exit code.
fn has_child(pid: u32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            std::fs::read_to_string(p.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(") ")?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_job_is_stopped_moved_to_the_trash_and_starts_afresh_under_its_name() {
    let mut h = Harness::start(3_600_000, 0).await;
    let sleep = ["sleep", "1000"];
    h.send(pb::WorkBatch {
        start: vec![start("j", 0, 1, &sleep)],
        ..Default::default()
    })
    .await;
    h.report(|t| is(t, "j", 0, 1, pb::TaskState::Running)).await;
    let task = h.dir().join("tasks/j/0/1");
    let old_pid = pid_in(&task);
    std::fs::write(task.join("old"), "").unwrap();
    until("the task's process runs", || has_child(old_pid)).await;

    // The job is deleted, and a new one of the same name starts at once:
    // in one batch, the forget first.
    h.send(pb::WorkBatch {
        forget_jobs: vec!["j".into()],
        start: vec![start("j", 0, 1, &sleep)],
        ..Default::default()
    })
    .await;
    // Attempt 1 again, yet a new task: it runs.
    h.report(|t| is(t, "j", 0, 1, pb::TaskState::Running)).await;

    // The old directory is in the trash, where the old task's exit lands:
    // stopped by SIGTERM (128 + 15).
    let trash = h.dir().join("trash");
    until("the old task ends in the trash", || {
        entries(&trash)
            .iter()
            .any(|t| read(&t.join("0/1/exit")).as_deref() == Some("143"))
    })
    .await;
    let trashed = entries(&trash);
    assert_eq!(trashed.len(), 1, "{trashed:?}");
    let name = trashed[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let ms = name.strip_prefix("j.").expect("named <job>.<unix_ms>");
    assert!(ms.parse::<u64>().is_ok(), "{name}");
    assert!(trashed[0].join("0/1/old").exists());
    assert_eq!(pid_in(&trashed[0].join("0/1")), old_pid);

    // The new task has a fresh directory, and the old one's end did not
    // touch it.
    assert!(!task.join("old").exists());
    assert!(!task.join("exit").exists());
    let new_pid = pid_in(&task);
    assert_ne!(new_pid, old_pid);
    until("the new task's process runs", || has_child(new_pid)).await;

    // Its first end is the one it is given: stopped, failed with 143. (Had
    // the old task's end been taken for it, that would have come first,
    // lost, with no exit code.)
    h.send(pb::WorkBatch {
        stop: vec![pb::TaskStop {
            job: "j".into(),
            index: 0,
            machine: "n1".into(),
        }],
        ..Default::default()
    })
    .await;
    let end = h.report(|t| t.job == "j" && terminal(t)).await;
    assert_eq!(end.state, pb::TaskState::Failed as i32, "{end:?}");
    assert_eq!(end.exit_code, Some(143));

    // Forgotten again: its output, served until then, no longer is.
    std::fs::write(task.join("stdout"), "hello\n").unwrap();
    assert_eq!(h.logs("j", 0).await.unwrap(), "hello\n");
    h.send(pb::WorkBatch {
        forget_jobs: vec!["j".into()],
        ..Default::default()
    })
    .await;
    until("the job's directory moves", || {
        !h.dir().join("tasks/j").exists()
    })
    .await;
    assert_eq!(entries(&trash).len(), 2);
    let err = h.logs("j", 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_trash_and_old_attempts_are_swept_after_the_retention() {
    let mut h = Harness::start(300, 0).await;
    h.send(pb::WorkBatch {
        start: vec![start("j", 0, 1, &["true"]), start("k", 0, 1, &["true"])],
        ..Default::default()
    })
    .await;
    h.report(|t| is(t, "j", 0, 1, pb::TaskState::Succeeded))
        .await;
    h.report(|t| is(t, "k", 0, 1, pb::TaskState::Succeeded))
        .await;
    h.send(pb::WorkBatch {
        start: vec![start("j", 0, 2, &["sleep", "1000"])],
        forget_jobs: vec!["k".into()],
        ..Default::default()
    })
    .await;
    h.report(|t| is(t, "j", 0, 2, pb::TaskState::Running)).await;
    let trash = h.dir().join("trash");
    until("k is in the trash", || entries(&trash).len() == 1).await;

    let old = h.dir().join("tasks/j/0/1");
    until("the trash and the older attempt are swept", || {
        entries(&trash).is_empty() && !old.exists()
    })
    .await;
    // The latest attempt stays, running.
    let latest = h.dir().join("tasks/j/0/2");
    assert!(latest.join("meta.json").exists());
    assert!(!latest.join("exit").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_its_agent_fences_its_tasks_and_reports_them_lost() {
    let mut h = Harness::start(3_600_000, 2000).await;
    let sleep = ["sleep", "1000"];
    h.send(pb::WorkBatch {
        start: vec![start("j", 0, 1, &sleep), start("j", 1, 1, &sleep)],
        ..Default::default()
    })
    .await;
    h.report(|t| is(t, "j", 0, 1, pb::TaskState::Running)).await;
    h.report(|t| is(t, "j", 1, 1, pb::TaskState::Running)).await;

    // The local agent goes away: every call fails, the work stream ends.
    h.stand_in.down.store(true, Ordering::SeqCst);
    h.work = None;
    // The fence stops both; the node tries to say they are lost (and
    // holds the reports). Their processes are gone: SIGTERM, 128 + 15.
    h.refused
        .take(|t| is(t, "j", 0, 1, pb::TaskState::Lost))
        .await;
    h.refused
        .take(|t| is(t, "j", 1, 1, pb::TaskState::Lost))
        .await;
    for index in 0..2 {
        let dir = h.dir().join(format!("tasks/j/{index}/1"));
        assert_eq!(read(&dir.join("exit")).as_deref(), Some("143"));
        assert!(dir.join("lost").exists(), "marked lost for a restart");
    }

    // Back: the node registers again and says its tasks are lost, not
    // failed with the signal's code.
    h.stand_in.down.store(false, Ordering::SeqCst);
    let r = h.registration().await;
    let mut states: Vec<(u32, i32)> = r.tasks.iter().map(|t| (t.index, t.state)).collect();
    states.sort();
    let lost = pb::TaskState::Lost as i32;
    assert_eq!(states, [(0, lost), (1, lost)], "{:?}", r.tasks);
    // The reports held while it was away say the same.
    h.report(|t| is(t, "j", 0, 1, pb::TaskState::Lost)).await;
    h.report(|t| is(t, "j", 1, 1, pb::TaskState::Lost)).await;

    // After the fence, new tasks run again.
    h.send(pb::WorkBatch {
        start: vec![start("j", 0, 2, &sleep)],
        ..Default::default()
    })
    .await;
    h.report(|t| is(t, "j", 0, 2, pb::TaskState::Running)).await;
}
