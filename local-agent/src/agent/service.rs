//! The `Machines` service: node agents register, heartbeat, take work and
//! report; the global scheduler lists machines and fetches task output.
//! Handlers decode, call the agent, encode; errors are [`AgentError`]s.

use std::pin::Pin;
use std::sync::Arc;

use sched_core::error::SpecError;
use sched_core::names::check_name;
use sched_proto::pb;
use sched_proto::pb::machines_server::Machines;
use sched_proto::pb::node_client::NodeClient;
use sched_proto::shutdown::Until;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::shared::Agent;
use crate::error::AgentError;

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

/// A registration names its node and at least one machine, each with a
/// valid name and some cpu and memory.
fn check_registration(r: &pb::RegisterNodeRequest) -> Result<(), SpecError> {
    if r.node.is_empty() {
        return Err(SpecError::new("node", "must not be empty"));
    }
    if r.machines.is_empty() {
        return Err(SpecError::new(
            "machines",
            "at least one machine is required",
        ));
    }
    for (i, m) in r.machines.iter().enumerate() {
        check_name(&format!("machines[{i}].name"), &m.name)?;
        let c = crate::from_pb(m.capacity.as_ref());
        if c.cpu.0 == 0 || c.memory.0 == 0 {
            return Err(SpecError::new(
                format!("machines[{i}].capacity"),
                "a machine needs some cpu and memory",
            ));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Machines for MachinesService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let r = request.into_inner();
        check_registration(&r).map_err(AgentError::from)?;
        self.agent.register_node(&r);
        tracing::info!(node = %r.node, machines = r.machines.len(), tasks = r.tasks.len(), "node registered");
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.agent.config.node_heartbeat.as_millis() as u32,
            task_dir_retention_ms: self.agent.config.policy.lifecycle.task_dir_retention.ms(),
        }))
    }

    async fn node_heartbeat(
        &self,
        request: Request<pb::NodeHeartbeatRequest>,
    ) -> Result<Response<pb::NodeHeartbeatResponse>, Status> {
        let known = self.agent.node_heartbeat(&request.into_inner().node);
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
        self.agent.open_work(&node, tx)?;
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
        self.agent.node_reports(&r.node, &r.tasks)?;
        Ok(Response::new(pb::NodeReportResponse {}))
    }

    async fn list_machines(
        &self,
        _request: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        Ok(Response::new(pb::ListMachinesResponse {
            machines: self.agent.machine_statuses(),
        }))
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let mut r = request.into_inner();
        let (address, machine) = self.agent.task_node(&r.job, r.index)?;
        r.machine = machine;
        let mut node = NodeClient::connect(address.clone())
            .await
            .map_err(|source| AgentError::Unreachable {
                peer: format!("node agent at {address}"),
                source,
            })?;
        let stream = node
            .task_logs(r)
            .await
            .map_err(AgentError::from)?
            .into_inner();
        Ok(Response::new(Box::pin(Until::new(
            stream,
            self.agent.shutdown.clone(),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(machines: Vec<pb::MachineSpec>) -> pb::RegisterNodeRequest {
        pb::RegisterNodeRequest {
            node: "n0".into(),
            address: String::new(),
            machines,
            tasks: Vec::new(),
        }
    }

    fn machine(name: &str, cpu_millis: u64) -> pb::MachineSpec {
        pb::MachineSpec {
            name: name.into(),
            capacity: Some(pb::Resources {
                cpu_millis,
                memory_bytes: 1 << 30,
                disk_bytes: 0,
                gpu_millis: 0,
            }),
            labels: Default::default(),
        }
    }

    #[test]
    fn a_bad_registration_names_the_field() {
        let field = |r: &pb::RegisterNodeRequest| check_registration(r).unwrap_err().field;
        assert_eq!(field(&registration(Vec::new())), "machines");
        assert_eq!(
            field(&registration(vec![
                machine("m0", 1000),
                machine("M!", 1000)
            ])),
            "machines[1].name"
        );
        assert_eq!(
            field(&registration(vec![machine("m0", 0)])),
            "machines[0].capacity"
        );
        let mut nameless = registration(vec![machine("m0", 1000)]);
        nameless.node.clear();
        assert_eq!(field(&nameless), "node");
        assert!(check_registration(&registration(vec![machine("m0", 1000)])).is_ok());
        let status = Status::from(AgentError::from(field_error()));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    fn field_error() -> SpecError {
        check_registration(&registration(Vec::new())).unwrap_err()
    }
}
