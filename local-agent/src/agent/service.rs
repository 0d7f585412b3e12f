//! The `Machines` service: node agents register, heartbeat, take work and
//! report; the global scheduler lists machines and fetches task output.

use std::pin::Pin;
use std::sync::Arc;

use sched_core::names::check_name;
use sched_proto::pb;
use sched_proto::pb::machines_server::Machines;
use sched_proto::pb::node_client::NodeClient;
use sched_proto::shutdown::Until;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::Agent;

/// Work batches a node may have unread before it is cut off (it then
/// registers again and gets what it missed).
const WORK_BUFFER: usize = 4096;

pub struct MachinesService {
    agent: Arc<Agent>,
}

impl MachinesService {
    pub fn new(agent: Arc<Agent>) -> Self {
        MachinesService { agent }
    }
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::WorkBatch, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

fn invalid(e: sched_core::error::SpecError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl Machines for MachinesService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let r = request.into_inner();
        if r.node.is_empty() {
            return Err(Status::invalid_argument("node: must not be empty"));
        }
        for (i, m) in r.machines.iter().enumerate() {
            check_name(&format!("machines[{i}].name"), &m.name).map_err(invalid)?;
            let c = crate::from_pb(m.capacity.as_ref());
            if c.cpu.0 == 0 || c.memory.0 == 0 {
                return Err(Status::invalid_argument(format!(
                    "machines[{i}].capacity: a machine needs some cpu and memory"
                )));
            }
        }
        if r.machines.is_empty() {
            return Err(Status::invalid_argument(
                "machines: at least one machine is required",
            ));
        }
        {
            let mut st = self.agent.state();
            st.register_node(&r.node, &r.address, &r.machines, &r.tasks);
        }
        tracing::info!(node = %r.node, machines = r.machines.len(), tasks = r.tasks.len(), "node registered");
        self.agent.wake.notify_one();
        self.agent.upstream.notify_one();
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.agent.config.node_heartbeat.as_millis() as u32,
        }))
    }

    async fn node_heartbeat(
        &self,
        request: Request<pb::NodeHeartbeatRequest>,
    ) -> Result<Response<pb::NodeHeartbeatResponse>, Status> {
        let node = request.into_inner().node;
        let known = self.agent.state().heartbeat(&node);
        Ok(Response::new(pb::NodeHeartbeatResponse {
            register_again: !known,
        }))
    }

    type WorkStream = WorkStream;

    async fn work(
        &self,
        request: Request<pb::WorkRequest>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let node = request.into_inner().node;
        let (tx, rx) = tokio::sync::mpsc::channel(WORK_BUFFER);
        if !self.agent.state().open_work(&node, tx) {
            return Err(Status::failed_precondition(format!(
                "node {node:?} is not registered; register first"
            )));
        }
        Ok(Response::new(Box::pin(Until::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            self.agent.shutdown.clone(),
        ))))
    }

    async fn node_report(
        &self,
        request: Request<pb::NodeReportRequest>,
    ) -> Result<Response<pb::NodeReportResponse>, Status> {
        let r = request.into_inner();
        {
            let mut st = self.agent.state();
            if !st.nodes.contains_key(&r.node) {
                return Err(Status::failed_precondition(format!(
                    "node {:?} is not registered; register first",
                    r.node
                )));
            }
            for t in &r.tasks {
                st.node_report(&r.node, t);
            }
        }
        self.agent.wake.notify_one();
        self.agent.upstream.notify_one();
        Ok(Response::new(pb::NodeReportResponse {}))
    }

    async fn list_machines(
        &self,
        _request: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        Ok(Response::new(pb::ListMachinesResponse {
            machines: self.agent.state().machine_statuses(),
        }))
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let mut r = request.into_inner();
        let (address, machine) =
            self.agent
                .state()
                .task_node(&r.job, r.index)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "task {}/{} is not placed in cluster {}",
                        r.job, r.index, self.agent.config.cluster
                    ))
                })?;
        r.machine = machine;
        let mut node = NodeClient::connect(address.clone())
            .await
            .map_err(|e| Status::unavailable(format!("node at {address}: {e}")))?;
        let stream = node.task_logs(r).await?.into_inner();
        Ok(Response::new(Box::pin(Until::new(
            stream,
            self.agent.shutdown.clone(),
        ))))
    }
}
