//! The gRPC handlers: decode, ask the state or queue a command for the
//! engine, encode. No decisions here.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sched_core::error::SpecError;
use sched_core::job::{parse_job_file, JobSpec, JobSpecText, ResourcesText};
use sched_core::names::check_name;
use sched_core::quantity::QuantityText;
use sched_proto::pb;
use sched_proto::pb::clusters_server::Clusters;
use sched_proto::pb::scheduler_server::Scheduler;
use sched_proto::shutdown::Until;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::convert::{from_pb_resources, to_pb_event, to_pb_resources};
use crate::error::ServiceError;
use crate::hub::{Command, Shared, Submission};
use crate::records::{ClusterRecord, MachineClassRecord};
use crate::registry::Heartbeat;
use crate::state::State;

/// Tasks of a submit call counted against the pending limit while it is in
/// the writers' queue.
struct Reservation<'a> {
    counter: &'a std::sync::atomic::AtomicU64,
    tasks: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.tasks, Ordering::SeqCst);
    }
}

/// Batches an assignment stream may hold before the agent is cut off.
const STREAM_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct SchedulerService {
    role: Arc<Role>,
}

#[derive(Clone)]
pub struct ClustersService {
    role: Arc<Role>,
}

impl SchedulerService {
    pub fn new(role: Arc<Role>) -> Self {
        SchedulerService { role }
    }
}

impl ClustersService {
    pub fn new(role: Arc<Role>) -> Self {
        ClustersService { role }
    }
}

/// Whether this replica leads, and where the leader is if not.
pub struct Role {
    shared: std::sync::RwLock<Option<Arc<Shared>>>,
    leader_hint: std::sync::Mutex<String>,
    /// Where a standby reads jobs from (etcd reads are linearizable, so a
    /// standby's answer includes every job the leader has acknowledged).
    store: Arc<dyn sched_store::Store>,
    config: crate::Config,
}

/// What a read is answered from: the leader's live state, or, on a
/// standby, the job(s) read from the store for this call.
pub enum View {
    Leader(Arc<Shared>),
    Standby { state: Box<State>, leader: String },
}

impl View {
    pub fn with<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        match self {
            View::Leader(s) => s.read(f),
            View::Standby { state, .. } => f(state),
        }
    }

    /// A standby's answer names the leader, as its refusals do, so that
    /// clients send their next call there.
    fn respond<T>(&self, body: T) -> Response<T> {
        let mut r = Response::new(body);
        if let View::Standby { leader, .. } = self {
            if let Ok(v) = leader.parse() {
                r.metadata_mut()
                    .insert(sched_proto::leader::LEADER_HEADER, v);
            }
        }
        r
    }
}

impl Role {
    pub fn new(store: Arc<dyn sched_store::Store>, config: crate::Config) -> Self {
        Role {
            shared: Default::default(),
            leader_hint: Default::default(),
            store,
            config,
        }
    }

    /// The view to answer a read from: the leader's state, or on a standby
    /// the stored jobs (only job `only`, if given). Job events and the live
    /// figures from heartbeats are the leader's alone.
    pub async fn view(&self, only: Option<&str>) -> Result<View, Status> {
        if let Ok(s) = self.leader() {
            return Ok(View::Leader(s));
        }
        let keys = crate::keys::Keys::new(&self.config.prefix);
        match crate::load_state(&keys, &self.store, &self.config, only).await {
            Ok(state) => Ok(View::Standby {
                state: Box::new(state),
                leader: self.hint(),
            }),
            Err(e) => Err(Status::unavailable(format!(
                "this replica is a standby and cannot read the store: {e}"
            ))),
        }
    }

    fn hint(&self) -> String {
        self.leader_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes this replica the leader, serving `shared`.
    pub fn lead(&self, shared: Arc<Shared>) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Some(shared);
    }

    /// Back to standing by.
    pub fn step_down(&self) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn is_leader(&self) -> bool {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records where the leader is, for standbys' answers.
    pub fn set_hint(&self, address: String) {
        *self.leader_hint.lock().unwrap_or_else(|p| p.into_inner()) = address;
    }

    /// The leader's state, or UNAVAILABLE naming the leader (in the message
    /// and the `x-sched-leader` header) so that clients try it next.
    pub fn leader(&self) -> Result<Arc<Shared>, Status> {
        if let Some(s) = self
            .shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(s.clone());
        }
        let hint = self.hint();
        let mut status = if hint.is_empty() {
            Status::unavailable("this replica is a standby and no leader is known yet; retry")
        } else {
            Status::unavailable(format!("this replica is a standby; the leader is {hint}"))
        };
        if let Ok(v) = hint.parse() {
            status
                .metadata_mut()
                .insert(sched_proto::leader::LEADER_HEADER, v);
        }
        Err(status)
    }
}

async fn ask<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<Result<T, ServiceError>>) -> Command,
) -> Result<T, ServiceError> {
    let (tx, rx) = oneshot::channel();
    shared.send(make(tx))?;
    rx.await.map_err(|_| ServiceError::ShuttingDown)?
}

/// A job from the API, checked like a job file's entry `field`.
fn spec_from_pb(j: pb::JobSpec, field: &str) -> Result<JobSpec, SpecError> {
    let r = j.resources.unwrap_or_default();
    let text = JobSpecText {
        name: j.name,
        tasks: j.tasks,
        resources: ResourcesText {
            cpu: QuantityText::Text(r.cpu),
            memory: QuantityText::Text(r.memory),
            disk: r.disk.map(QuantityText::Text),
            gpu: r.gpu.map(QuantityText::Text),
        },
        priority: j.priority,
        locality: j.locality,
        constraints: j.constraints.into_iter().collect(),
        command: j.command,
    };
    text.validate(field)
}

/// The jobs of a submit call, validated like a job file's (public for the
/// decoder fuzz tests).
pub fn specs_of(req: pb::SubmitRequest, max_jobs: usize) -> Result<Vec<JobSpec>, SpecError> {
    let specs = match (req.yaml.is_empty(), req.jobs.is_empty()) {
        (false, true) => parse_job_file(&req.yaml)?,
        (true, false) => {
            let mut names = BTreeSet::new();
            let mut out = Vec::with_capacity(req.jobs.len());
            for (i, j) in req.jobs.into_iter().enumerate() {
                let spec = spec_from_pb(j, &format!("jobs[{i}]"))?;
                if !names.insert(spec.name.clone()) {
                    return Err(SpecError::new(
                        format!("jobs[{i}].name"),
                        format!("duplicate job name {:?}", spec.name),
                    ));
                }
                out.push(spec);
            }
            out
        }
        (true, true) => return Err(SpecError::new("jobs", "at least one job is required")),
        (false, false) => {
            return Err(SpecError::new(
                "yaml",
                "give either a job file or a list of jobs, not both",
            ))
        }
    };
    if specs.len() > max_jobs {
        return Err(SpecError::new(
            "jobs",
            format!("{} jobs in one call; at most {max_jobs}", specs.len()),
        ));
    }
    Ok(specs)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// A client for a local agent's `Machines` service.
async fn agent_client(
    address: &str,
) -> Result<sched_proto::pb::machines_client::MachinesClient<tonic::transport::Channel>, Status> {
    let endpoint = tonic::transport::Channel::from_shared(address.to_string())
        .map_err(|e| Status::internal(format!("bad agent address {address:?}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("local agent at {address}: {e}")))?;
    Ok(sched_proto::pb::machines_client::MachinesClient::new(
        channel,
    ))
}
type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let shared = self.role.leader()?;
        let req = request.into_inner();
        let submission_id = req.submission_id.clone();
        let specs = specs_of(req, shared.limits.max_jobs_per_submit).map_err(ServiceError::from)?;
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let tasks: u64 = specs.iter().map(|s| u64::from(s.tasks)).sum();
        let (records, new) = shared.read(|state| {
            let records = state
                .check_submission(specs, &submission_id, crate::now_unix_ms())
                .map_err(ServiceError::from)?;
            let new: u64 = records.iter().map(|r| u64::from(r.tasks)).sum();
            // Count the calls still in the writers' queue too: without
            // them, a burst of calls would each see room and all get in.
            let max = shared.limits.max_pending_tasks;
            let in_queue = shared.reserved.fetch_add(new, Ordering::SeqCst);
            if new > 0 && state.pending_tasks() + in_queue + new > max {
                shared.reserved.fetch_sub(new, Ordering::SeqCst);
                return Err(ServiceError::Busy(format!(
                    "{} tasks are waiting for a cluster or being written (limit {max})",
                    state.pending_tasks() + in_queue
                )));
            }
            Ok((records, new))
        })?;
        // Released when the call ends, however it ends (the accepted jobs
        // count in `pending_tasks` by then).
        let _reservation = Reservation {
            counter: &shared.reserved,
            tasks: new,
        };
        if !records.is_empty() {
            let (reply, answer) = oneshot::channel();
            shared
                .submissions
                .try_send(Submission { records, reply })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => {
                        ServiceError::Busy("the scheduler's submission queue is full".to_string())
                    }
                    mpsc::error::TrySendError::Closed(_) => ServiceError::ShuttingDown,
                })?;
            answer.await.map_err(|_| ServiceError::ShuttingDown)??;
        }
        Ok(Response::new(pb::SubmitResponse { jobs: names, tasks }))
    }

    async fn list_machines(
        &self,
        request: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        let shared = self.role.leader()?;
        let want = request.into_inner().cluster;
        let agents: Vec<(String, String)> = shared.read(|state| {
            state
                .registry()
                .entries()
                .iter()
                .filter(|e| want.is_empty() || e.record.name == want)
                .map(|e| (e.record.name.clone(), e.record.address.clone()))
                .collect()
        });
        if !want.is_empty() && agents.is_empty() {
            return Err(ServiceError::NotFound {
                what: "cluster",
                name: want,
            }
            .into());
        }
        let mut machines = Vec::new();
        for (name, address) in agents {
            if address.is_empty() {
                continue;
            }
            let r = async {
                let mut c = agent_client(&address).await?;
                c.list_machines(pb::ListMachinesRequest {
                    cluster: name.clone(),
                })
                .await
            }
            .await;
            match r {
                Ok(r) => machines.extend(r.into_inner().machines),
                // One cluster down does not hide the others; asked for
                // alone, it is an error.
                Err(e) if want.is_empty() => {
                    tracing::warn!(cluster = %name, cause = %e, "cannot list machines");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Response::new(pb::ListMachinesResponse { machines }))
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let shared = self.role.leader()?;
        let r = request.into_inner();
        let address = shared.read(|state| -> Result<String, Status> {
            let j = state.job(&r.job).ok_or(ServiceError::NotFound {
                what: "job",
                name: r.job.clone(),
            })?;
            let t = j.tasks.get(r.index as usize).ok_or_else(|| {
                Status::not_found(format!("job {} has no task {}", r.job, r.index))
            })?;
            let cluster = t.cluster.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "task {}/{} is not on a cluster yet ({})",
                    r.job,
                    r.index,
                    t.state.as_str()
                ))
            })?;
            Ok(state.registry().entries()[cluster.0 as usize]
                .record
                .address
                .clone())
        })?;
        if address.is_empty() {
            return Err(Status::failed_precondition(
                "the task's cluster has no agent address",
            ));
        }
        let mut c = agent_client(&address).await?;
        let stream = c.task_logs(r).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobStatus>, Status> {
        let name = request.into_inner().name;
        let view = self.role.view(Some(&name)).await?;
        let status = view.with(|state| state.job(&name).map(|j| state.status(j)));
        let status = status.ok_or(ServiceError::NotFound { what: "job", name })?;
        Ok(view.respond(status))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let want = request.into_inner().state;
        let view = self.role.view(None).await?;
        let jobs = view.with(|state| {
            let mut jobs: Vec<&crate::state::JobEntry> = state.jobs().collect();
            jobs.sort_by_key(|j| j.job.id);
            jobs.into_iter()
                .map(State::summary)
                .filter(|s| want == 0 || s.state == want)
                .collect()
        });
        Ok(view.respond(pb::ListJobsResponse { jobs }))
    }

    async fn describe_job(
        &self,
        request: Request<pb::DescribeJobRequest>,
    ) -> Result<Response<pb::DescribeJobResponse>, Status> {
        let name = request.into_inner().name;
        let view = self.role.view(Some(&name)).await?;
        let standby = match &view {
            View::Standby { leader, .. } => Some(leader.clone()),
            View::Leader(_) => None,
        };
        let described = view.with(|state| {
            let j = state.job(&name)?;
            let pending_reasons = match &standby {
                // Why a task waits depends on live heartbeats, which only
                // the leader has.
                Some(leader) if state.pending_of(j) > 0 => vec![format!(
                    "read from a standby, which has no live cluster figures: ask the leader ({}) why tasks are pending",
                    if leader.is_empty() { "none elected yet" } else { leader }
                )],
                Some(_) => Vec::new(),
                None => state.pending_reasons(j),
            };
            Some(pb::DescribeJobResponse {
                status: Some(state.status(j)),
                events: j.events.iter().map(to_pb_event).collect(),
                pending_reasons,
            })
        });
        let described = described.ok_or(ServiceError::NotFound { what: "job", name })?;
        Ok(view.respond(described))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let shared = self.role.leader()?;
        let name = request.into_inner().name;
        if shared.read(|s| s.job(&name).is_none()) {
            return Err(ServiceError::NotFound { what: "job", name }.into());
        }
        let state = ask(&shared, |reply| Command::Cancel { name, reply }).await?;
        Ok(Response::new(pb::CancelJobResponse {
            state: state as i32,
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let shared = self.role.leader()?;
        let job = request.into_inner().job;
        let rx = shared.read(|s| s.subscribe());
        let stream = BroadcastStream::new(rx).filter_map(move |e| match e {
            Ok(e) if job.is_empty() || e.job == job => Some(Ok(to_pb_event(&e))),
            Ok(_) => None,
            // A slow watcher misses events rather than slowing the
            // scheduler; tell it how many.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Ok(pb::Event {
                    unix_ms: crate::now_unix_ms(),
                    job: String::new(),
                    kind: "lagged".to_string(),
                    message: format!("{n} event(s) dropped: the watcher fell behind"),
                }))
            }
        });
        Ok(Response::new(Box::pin(Until::new(
            stream,
            shared.shutdown.clone(),
        ))))
    }

    async fn list_clusters(
        &self,
        _request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let shared = self.role.leader()?;
        let clusters = shared.read(|state| {
            state
                .registry()
                .entries()
                .iter()
                .map(|e| pb::ClusterStatus {
                    name: e.record.name.clone(),
                    location: e.record.location.clone(),
                    up: e.summary.up,
                    machines: e.summary.classes.iter().map(|c| c.count).sum(),
                    capacity: Some(to_pb_resources(&e.summary.capacity)),
                    allocated: Some(to_pb_resources(&e.summary.allocated)),
                    queued: Some(to_pb_resources(&e.summary.queued)),
                    queue_len: e.summary.queue_len,
                    in_flight: e.in_flight,
                    last_heartbeat_unix_ms: e.last_heartbeat_unix_ms,
                })
                .collect()
        });
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }
}

/// Machine classes from a registration or heartbeat, validated.
pub fn classes_from_pb(
    classes: Vec<pb::MachineClassStatus>,
) -> Result<Vec<MachineClassRecord>, SpecError> {
    let mut names = BTreeSet::new();
    classes
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("classes[{i}]");
            check_name(&format!("{field}.name"), &c.name)?;
            if !names.insert(c.name.clone()) {
                return Err(SpecError::new(
                    format!("{field}.name"),
                    format!("duplicate class {:?}", c.name),
                ));
            }
            let capacity = from_pb_resources(c.capacity.as_ref());
            if capacity.cpu.0 == 0 || capacity.memory.0 == 0 {
                return Err(SpecError::new(
                    format!("{field}.capacity"),
                    "a machine needs some cpu and memory",
                ));
            }
            Ok(MachineClassRecord {
                name: c.name,
                capacity: capacity.into(),
                labels: c.labels.into_iter().collect(),
                count: c.count,
            })
        })
        .collect()
}

impl ClustersService {
    fn cluster_id(&self, name: &str) -> Result<sched_core::cluster::ClusterId, Status> {
        let shared = self.role.leader()?;
        let id = shared.read(|s| s.registry().id(name));
        id.ok_or_else(|| {
            Status::failed_precondition(format!(
                "cluster {name:?} is not registered; register first"
            ))
        })
    }
}

#[tonic::async_trait]
impl Clusters for ClustersService {
    async fn register_cluster(
        &self,
        request: Request<pb::RegisterClusterRequest>,
    ) -> Result<Response<pb::RegisterClusterResponse>, Status> {
        let shared = self.role.leader()?;
        let r = request.into_inner();
        check_name("cluster", &r.cluster).map_err(ServiceError::from)?;
        check_name("location", &r.location).map_err(ServiceError::from)?;
        let classes = classes_from_pb(r.classes).map_err(ServiceError::from)?;
        let record = ClusterRecord {
            name: r.cluster,
            location: r.location,
            address: r.address,
            classes,
            seen_classes: Vec::new(),
            registered_unix_ms: crate::now_unix_ms(),
        };
        ask(&shared, |reply| Command::Register { record, reply }).await?;
        Ok(Response::new(pb::RegisterClusterResponse {
            heartbeat_interval_ms: shared.limits.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let shared = self.role.leader()?;
        let r = request.into_inner();
        let classes = if r.classes.is_empty() {
            None
        } else {
            Some(classes_from_pb(r.classes).map_err(ServiceError::from)?)
        };
        let hb = Heartbeat {
            classes,
            allocated: from_pb_resources(r.allocated.as_ref()),
            queued: from_pb_resources(r.queued.as_ref()),
            queue_len: r.queue_len,
            seq_seen: r.seq_seen,
        };
        // A pass over every pending job only when the cluster can take more
        // than before; otherwise heartbeats would re-rank everything each
        // second per cluster.
        let (improved, changed) = shared.write(|state| {
            let before = state
                .registry()
                .id(&r.cluster)
                .map(|id| state.registry().entries()[id.0 as usize].record.clone());
            let improved = state.registry_mut().heartbeat(&r.cluster, hb);
            if improved == Some(true) {
                state.mark_rescan();
            }
            // Machines came or went: keep the stored record current, so a
            // leader taking over sizes jobs against the machines there are.
            let changed = before.and_then(|b| {
                let id = state.registry().id(&r.cluster)?;
                let now = &state.registry().entries()[id.0 as usize].record;
                (now.classes != b.classes).then(|| now.clone())
            });
            (improved, changed)
        });
        if let Some(record) = changed {
            let (reply, _) = tokio::sync::oneshot::channel();
            // Best effort: the next change or registration writes it too.
            let _ = shared.send(Command::Register { record, reply });
        }
        let known = improved.is_some();
        if improved == Some(true) {
            shared.wake.notify_one();
        }
        Ok(Response::new(pb::HeartbeatResponse {
            register_again: !known,
        }))
    }

    type AssignmentsStream = AssignmentStream;

    async fn assignments(
        &self,
        request: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let shared = self.role.leader()?;
        let id = self.cluster_id(&request.into_inner().cluster)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        shared.open_stream(id, tx);
        Ok(Response::new(Box::pin(Until::new(
            ReceiverStream::new(rx),
            shared.shutdown.clone(),
        ))))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let shared = self.role.leader()?;
        let r = request.into_inner();
        let cluster = self.cluster_id(&r.cluster)?;
        ask(&shared, |reply| Command::Report {
            cluster,
            tasks: r.tasks,
            handed_back: r.handed_back,
            reply,
        })
        .await?;
        Ok(Response::new(pb::ReportResponse {}))
    }
}
