//! The `Machines` service: node agents register, heartbeat, take work and
//! report; the global scheduler lists machines and fetches task output.
//! Handlers decode, call the agent, encode; errors are [`AgentError`]s.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sched_core::error::SpecError;
use sched_core::gpu::{DEVICE_MILLI, GPU_MODEL_LABEL, MAX_DEVICES};
use sched_core::names::check_name;
use sched_core::resources::Resources;
use sched_proto::pb;
use sched_proto::pb::machines_server::Machines;
use sched_proto::pb::node_client::NodeClient;
use sched_proto::shutdown::Until;
use sched_security::{Guard, Kind};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::shared::Agent;
use crate::error::AgentError;

/// Work batches a node may have unread before it is cut off (it then
/// registers again and gets what it missed).
const WORK_BUFFER: usize = 4096;

pub struct MachinesService {
    agent: Arc<Agent>,
    guard: Guard,
    /// Under mutual TLS, the certificate each node last spoke with and
    /// when: another certificate for a node heard from within the machine
    /// timeout is refused, so a rogue cannot take over a live machine.
    owners: Mutex<HashMap<String, (String, Instant)>>,
}

impl MachinesService {
    pub fn new(agent: Arc<Agent>) -> Self {
        let guard = Guard::new(agent.config.tls.is_some(), None);
        MachinesService {
            agent,
            guard,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// The caller must be node `node`'s agent, with the certificate that
    /// speaks for it (a new one only once the old one has gone quiet).
    fn check_node<T>(&self, request: &Request<T>, node: &str) -> Result<(), Status> {
        let Some(peer) = self.guard.component(request, Kind::Node, node)? else {
            return Ok(());
        };
        let now = Instant::now();
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        match owners.get(node) {
            Some((fp, seen))
                if *fp != peer.fingerprint
                    && now.duration_since(*seen) < self.agent.config.machine_timeout =>
            {
                tracing::warn!(%node, "denied: another certificate for a live node");
                Err(Status::permission_denied(format!(
                    "node {node} is held by another certificate that is still heartbeating"
                )))
            }
            _ => {
                owners.insert(node.to_string(), (peer.fingerprint, now));
                Ok(())
            }
        }
    }
}

/// A node's certificate names the node; its machines are the node itself,
/// or, for hollow nodes, `NODE-0`, `NODE-1`, ...
fn machine_of_node(node: &str, machine: &str) -> bool {
    machine == node
        || machine
            .strip_prefix(node)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// A machine's GPU devices: at most [`MAX_DEVICES`], with a model, and a
/// GPU capacity (if given) of whole devices that agrees with them.
fn check_gpus(i: usize, m: &pb::MachineSpec, c: &Resources) -> Result<(), SpecError> {
    let field = |f: &str| format!("machines[{i}].{f}");
    if m.gpu_devices == 0 {
        if !m.gpu_model.is_empty() {
            return Err(SpecError::new(
                field("gpu_model"),
                "a GPU model needs GPU devices (gpu_devices)",
            ));
        }
        return Ok(());
    }
    if m.gpu_devices > MAX_DEVICES {
        return Err(SpecError::new(
            field("gpu_devices"),
            format!("{} is out of range 0..={MAX_DEVICES}", m.gpu_devices),
        ));
    }
    if m.gpu_model.is_empty() {
        return Err(SpecError::new(
            field("gpu_model"),
            "required with gpu_devices",
        ));
    }
    sched_core::topology::check_gpu_model(&field("gpu_model"), &m.gpu_model, false)?;
    let whole = u64::from(m.gpu_devices) * u64::from(DEVICE_MILLI);
    if c.gpu.0 != 0 && c.gpu.0 != whole {
        return Err(SpecError::new(
            field("capacity.gpu_millis"),
            format!(
                "{} disagrees with {} devices ({whole})",
                c.gpu.0, m.gpu_devices
            ),
        ));
    }
    if m.labels
        .get(GPU_MODEL_LABEL)
        .is_some_and(|l| *l != m.gpu_model)
    {
        return Err(SpecError::new(
            field("labels"),
            format!("the label {GPU_MODEL_LABEL} disagrees with gpu_model"),
        ));
    }
    Ok(())
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
        check_gpus(i, m, &c)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Machines for MachinesService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        self.check_node(&request, &request.get_ref().node)?;
        let r = request.into_inner();
        check_registration(&r).map_err(AgentError::from)?;
        if self.guard.tls() {
            if let Some(m) = r
                .machines
                .iter()
                .find(|m| !machine_of_node(&r.node, &m.name))
            {
                tracing::warn!(node = %r.node, machine = %m.name, "denied: a machine of another name");
                return Err(Status::permission_denied(format!(
                    "node {}'s certificate cannot register machine {}",
                    r.node, m.name
                )));
            }
        }
        self.agent.register_node(&r);
        tracing::info!(node = %r.node, machines = r.machines.len(), tasks = r.tasks.len(), "node registered");
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.agent.config.node_heartbeat.as_millis() as u32,
            task_dir_retention_ms: self.agent.policy().lifecycle.task_dir_retention.ms(),
        }))
    }

    async fn node_heartbeat(
        &self,
        request: Request<pb::NodeHeartbeatRequest>,
    ) -> Result<Response<pb::NodeHeartbeatResponse>, Status> {
        self.check_node(&request, &request.get_ref().node)?;
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
        self.check_node(&request, &request.get_ref().node)?;
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
        self.check_node(&request, &request.get_ref().node)?;
        let r = request.into_inner();
        self.agent.node_reports(&r.node, &r.tasks)?;
        Ok(Response::new(pb::NodeReportResponse {}))
    }

    async fn list_machines(
        &self,
        request: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        self.guard.one_of(&request, &[Kind::Scheduler])?;
        // The filter names a cluster; this agent holds one cluster's
        // machines, so another name matches nothing it has (as the global
        // scheduler answers for a cluster it does not know).
        let want = &request.get_ref().cluster;
        let mine = &self.agent.config.cluster;
        if !want.is_empty() && want != mine {
            return Err(Status::not_found(format!(
                "cluster: this local agent serves cluster {mine:?}, not {want:?}"
            )));
        }
        Ok(Response::new(pb::ListMachinesResponse {
            machines: self.agent.machine_statuses(),
        }))
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        self.guard.one_of(&request, &[Kind::Scheduler])?;
        let mut r = request.into_inner();
        let (address, machine) = self.agent.task_node(&r.job, r.index)?;
        r.machine = machine;
        let endpoint = sched_security::tls::endpoint(&address, self.agent.config.tls.as_ref())
            .map_err(|e| Status::internal(format!("node agent at {address}: {e}")))?;
        let mut node = endpoint
            .connect()
            .await
            .map(NodeClient::new)
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
            gpu_devices: 0,
            gpu_model: String::new(),
        }
    }

    #[test]
    fn a_node_certificate_covers_its_machine_and_its_hollow_ones() {
        assert!(machine_of_node("m1", "m1"));
        assert!(machine_of_node("h", "h-12"));
        assert!(!machine_of_node("m1", "m2"));
        assert!(!machine_of_node("m", "m1"));
        assert!(!machine_of_node("h", "h-"));
        assert!(!machine_of_node("h", "h-x"));
    }

    #[test]
    fn gpu_devices_need_a_model_a_bound_and_an_agreeing_capacity() {
        let gpus = |devices: u32, model: &str, milli: u64| {
            let mut m = machine("g0", 1000);
            m.gpu_devices = devices;
            m.gpu_model = model.into();
            m.capacity.as_mut().unwrap().gpu_millis = milli;
            registration(vec![m])
        };
        let field = |r: &pb::RegisterNodeRequest| check_registration(r).unwrap_err().field;
        assert!(check_registration(&gpus(2, "V100M16", 2000)).is_ok());
        assert!(check_registration(&gpus(2, "V100M16", 0)).is_ok());
        assert_eq!(field(&gpus(2, "", 2000)), "machines[0].gpu_model");
        assert_eq!(field(&gpus(2, "V100 M16", 2000)), "machines[0].gpu_model");
        assert_eq!(field(&gpus(0, "T4", 0)), "machines[0].gpu_model");
        assert_eq!(field(&gpus(65, "T4", 0)), "machines[0].gpu_devices");
        assert_eq!(
            field(&gpus(2, "T4", 1500)),
            "machines[0].capacity.gpu_millis"
        );
        let mut other_label = gpus(2, "T4", 0);
        other_label.machines[0]
            .labels
            .insert(GPU_MODEL_LABEL.into(), "A100".into());
        assert_eq!(field(&other_label), "machines[0].labels");
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
