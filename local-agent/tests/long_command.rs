//! A local agent (in-memory store) and a node agent with real processes,
//! fed by a stand-in global scheduler: a job whose command is ~11 KB is
//! placed and runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use local_agent::agent::AgentConfig;
use local_agent::limits::Limits;
use local_agent::node::run_as::{Identity, RunAs};
use local_agent::node::{MachineConfig, NodeConfig};
use sched_core::policy::Policy;
use sched_core::resources::Resources;
use sched_proto::pb;
use sched_proto::pb::clusters_server::{Clusters, ClustersServer};
use sched_store::{MemStore, Store, MAX_COMMIT_BYTES};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The global scheduler's side of one cluster: hands over one batch and
/// passes on every report.
struct Global {
    batch: Mutex<Option<pb::AssignmentBatch>>,
    /// The open assignment stream, kept so that it does not end.
    stream: Mutex<Vec<mpsc::Sender<Result<pb::AssignmentBatch, Status>>>>,
    reports: mpsc::UnboundedSender<pb::ReportRequest>,
}

#[tonic::async_trait]
impl Clusters for Global {
    async fn register_cluster(
        &self,
        _request: Request<pb::RegisterClusterRequest>,
    ) -> Result<Response<pb::RegisterClusterResponse>, Status> {
        Ok(Response::new(pb::RegisterClusterResponse {
            heartbeat_interval_ms: 200,
        }))
    }

    async fn heartbeat(
        &self,
        _request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse {
            register_again: false,
        }))
    }

    type AssignmentsStream = ReceiverStream<Result<pb::AssignmentBatch, Status>>;

    async fn assignments(
        &self,
        _request: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        if let Some(batch) = self.batch.lock().unwrap().take() {
            tx.try_send(Ok(batch)).unwrap();
        }
        self.stream.lock().unwrap().push(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let _ = self.reports.send(request.into_inner());
        Ok(Response::new(pb::ReportResponse {}))
    }
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproduce_issue_10_a_job_with_an_11_kb_command_is_placed_and_runs() {
    // Issue 10: every placement record copied the command, so a commit of
    // 127 placements of this job held 1.4 MB, over the store's limit: it
    // was refused and retried every 200 ms, forever. 150 tasks need two
    // commits by count alone.
    const TASKS: u32 = 150;
    let payload = "x".repeat(11_000);
    let command: Vec<String> = ["sh", "-c", "test ${#1} -eq 11000", "sh", &payload]
        .map(String::from)
        .to_vec();
    assert!(command.concat().len() * 127 > MAX_COMMIT_BYTES);
    let shutdown = CancellationToken::new();

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let global = Global {
        batch: Mutex::new(Some(pb::AssignmentBatch {
            assignments: vec![pb::Assignment {
                job: "long".into(),
                indices: (0..TASKS).collect(),
                request: Some(pb::Resources {
                    cpu_millis: 10,
                    memory_bytes: 1 << 20,
                    disk_bytes: 0,
                    gpu_millis: 0,
                }),
                constraints: Default::default(),
                command: command.clone(),
                priority: 0,
            }],
            cancelled_jobs: Vec::new(),
            seq: u64::from(TASKS),
            ..Default::default()
        })),
        stream: Mutex::new(Vec::new()),
        reports: reports_tx,
    };
    let (listener, global_url) = listen().await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClustersServer::new(global))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );

    let store = Arc::new(MemStore::new());
    let (listener, agent_url) = listen().await;
    let agent = tokio::spawn(local_agent::agent::run(
        listener,
        store.clone(),
        AgentConfig {
            cluster: "east-a".into(),
            location: "us-east".into(),
            global: global_url,
            prefix: "/sched".into(),
            policy: Policy::default(),
            policy_file: None,
            node_heartbeat: Duration::from_millis(200),
            machine_timeout: Duration::from_secs(5),
            advertise: None,
            tls: None,
        },
        shutdown.clone(),
    ));

    let work_dir = tempfile::tempdir().unwrap();
    let node = tokio::spawn(local_agent::node::run(
        NodeConfig {
            agent: agent_url,
            name: "n0".into(),
            machines: vec![MachineConfig {
                name: "m0".into(),
                capacity: Resources::new(64_000, 64 << 30),
                labels: Default::default(),
                gpu_devices: 0,
                gpu_model: String::new(),
            }],
            work_dir: work_dir.path().to_path_buf(),
            hollow: None,
            lease: Duration::from_secs(3),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            supervisor: env!("CARGO_BIN_EXE_local-agent").into(),
            tls: None,
            insecure: false,
            run_as: RunAs::Myself(Identity::current()),
            limits: Limits::rlimits(),
        },
        shutdown.clone(),
    ));

    // Every task succeeds: its process got the whole command.
    let mut succeeded = std::collections::BTreeSet::new();
    let mut other_ends = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while succeeded.len() < TASKS as usize {
        let Ok(Some(r)) = tokio::time::timeout_at(deadline, reports.recv()).await else {
            break;
        };
        assert!(r.handed_back.is_empty(), "{:?}", r.handed_back);
        for t in r.tasks {
            match pb::TaskState::try_from(t.state).unwrap() {
                pb::TaskState::Succeeded => {
                    succeeded.insert(t.index);
                }
                pb::TaskState::Failed | pb::TaskState::Lost => other_ends.push(t),
                _ => {}
            }
        }
    }
    assert!(other_ends.is_empty(), "{other_ends:?}");
    assert_eq!(succeeded.len(), TASKS as usize);

    // The command is stored once, in the job's spec, not per placement.
    let stored = store.list("/sched/placements/east-a/").await.unwrap();
    let with_command: Vec<&str> = stored
        .items
        .iter()
        .filter(|kv| {
            kv.value
                .windows(100)
                .any(|w| w == &payload.as_bytes()[..100])
        })
        .map(|kv| kv.key.as_str())
        .collect();
    assert_eq!(with_command, ["/sched/placements/east-a/long/spec"]);
    // (The placements go once the global scheduler has their successes:
    // those still there are the ones not acknowledged yet.)
    assert!(stored.items.len() <= TASKS as usize + 1);

    shutdown.cancel();
    node.await.unwrap().unwrap();
    agent.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
}
