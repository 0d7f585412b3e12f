//! `clustersched.v1.SchedulerService`: submit, read, cancel and watch jobs; machines and
//! task logs through the clusters' agents.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sched_proto::pb::scheduler_service_server::SchedulerService as SchedulerApi;
use sched_proto::{pb, wkt};
use sched_security::{Role as UserRole, User};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{ask, paging, specs_of, Role, View};
use crate::convert::{to_pb_event, to_pb_resources};
use crate::error::ServiceError;
use crate::hub::{Command, Submission};
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

#[derive(Clone)]
pub struct SchedulerService {
    role: Arc<Role>,
}

impl SchedulerService {
    pub fn new(role: Arc<Role>) -> Self {
        SchedulerService { role }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

/// PERMISSION_DENIED unless `user` may read `tenant`'s job `job`.
fn may_see(user: &User, tenant: &str, job: &str) -> Result<(), Status> {
    if user.sees(tenant) {
        return Ok(());
    }
    tracing::warn!(user = %user.name, %job, %tenant, "denied: another tenant's job");
    Err(Status::permission_denied(format!(
        "job {job} belongs to another tenant than {}'s",
        user.name
    )))
}

/// PERMISSION_DENIED unless `user` may change `tenant`'s job `job`.
fn may_change(user: &User, tenant: &str, job: &str, what: &str) -> Result<(), Status> {
    user.require(UserRole::Submitter, what)?;
    may_see(user, tenant, job)
}

/// The tenant of job `name`, if it exists (NOT_FOUND otherwise).
fn tenant_of(state: &State, name: &str) -> Result<String, Status> {
    state
        .job(name)
        .map(|j| j.record.tenant.clone())
        .ok_or_else(|| {
            ServiceError::NotFound {
                what: "job",
                name: name.to_string(),
            }
            .into()
        })
}

/// A client for a local agent's `Machines` service.
async fn agent_client(
    address: &str,
    tls: Option<&sched_security::Tls>,
) -> Result<sched_proto::pb::machines_client::MachinesClient<tonic::transport::Channel>, Status> {
    let endpoint = sched_security::tls::endpoint(address, tls)
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

#[tonic::async_trait]
impl SchedulerApi for SchedulerService {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        user.require(UserRole::Submitter, "submit")?;
        let shared = self.role.leader()?;
        let req = request.into_inner();
        let submission_id = req.submission_id.clone();
        let mut specs =
            specs_of(req, shared.limits.max_jobs_per_submit).map_err(ServiceError::from)?;
        // With tokens, a job is its submitter's tenant's; only an admin
        // may name another.
        if let Some(tenant) = &user.tenant {
            for (i, s) in specs.iter_mut().enumerate() {
                let named = s.tenant != sched_core::job::DEFAULT_TENANT;
                if named && s.tenant != *tenant && user.role != UserRole::Admin {
                    tracing::warn!(user = %user.name, tenant = %s.tenant, "denied: a job for another tenant");
                    return Err(Status::permission_denied(format!(
                        "jobs[{i}].tenant: {} may submit only for tenant {tenant}, not {}",
                        user.name, s.tenant
                    )));
                }
                if !named {
                    s.tenant = tenant.clone();
                }
            }
        }
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let tasks: u64 = specs.iter().map(|s| u64::from(s.tasks)).sum();
        let (records, new) = shared.read(|state| {
            let records = state
                .check_submission(specs, &submission_id, crate::records::now_unix_ms())?;
            state.check_quotas(&records).map_err(|e| {
                tracing::info!(tenant = %e.tenant, band = %e.band, resource = e.resource, "refused: over quota");
                ServiceError::from(e)
            })?;
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
        self.role.guard().user(&request)?;
        let shared = self.role.leader()?;
        let want = request.into_inner().cluster;
        let agents: Vec<(String, String)> = shared.read(|state| {
            state
                .registry()
                .entries()
                .iter()
                .filter(|e| !e.removed && (want.is_empty() || e.record.name == want))
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
                let mut c = agent_client(&address, self.role.tls()).await?;
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
        let user = self.role.guard().user(&request)?;
        let shared = self.role.leader()?;
        let r = request.into_inner();
        let address = shared.read(|state| -> Result<String, Status> {
            let j = state.job(&r.job).ok_or(ServiceError::NotFound {
                what: "job",
                name: r.job.clone(),
            })?;
            may_see(&user, &j.record.tenant, &r.job)?;
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
        let mut c = agent_client(&address, self.role.tls()).await?;
        let stream = c.task_logs(r).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::JobStatus>, Status> {
        let user = self.role.guard().user(&request)?;
        let pb::GetJobRequest { name, view: shape } = request.into_inner();
        paging::known::<pb::JobView>("view", shape).map_err(ServiceError::from)?;
        let full = shape == pb::JobView::Full as i32;
        let view = self.role.view(Some(&name)).await?;
        let status = view.with(|state| {
            let j = state.job(&name)?;
            Some(may_see(&user, &j.record.tenant, &name).and_then(|()| {
                if full && j.tasks.len() > paging::FULL_VIEW_MAX_TASKS {
                    return Err(ServiceError::Precondition {
                        reason: "TOO_MANY_TASKS",
                        message: format!(
                            "job {name} has {} tasks; JOB_VIEW_FULL shows at most {}: page them with ListTasks",
                            j.tasks.len(),
                            paging::FULL_VIEW_MAX_TASKS
                        ),
                    }
                    .into());
                }
                let mut status = state.status(j);
                if !full {
                    status.tasks.clear();
                }
                Ok(status)
            }))
        });
        let status = status.ok_or(ServiceError::NotFound { what: "job", name })??;
        Ok(view.respond(status))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        let r = request.into_inner();
        paging::known::<pb::JobState>("state", r.state).map_err(ServiceError::from)?;
        let size = paging::size(r.page_size, paging::JOBS_DEFAULT, paging::JOBS_MAX)
            .map_err(ServiceError::from)?;
        let state_filter = r.state.to_string();
        let scope = ["jobs", &state_filter, &r.name_prefix, &r.tenant];
        let after = paging::resume(&scope, &r.page_token).map_err(ServiceError::from)?;
        let view = self.role.view(None).await?;
        let (jobs, more) = view.with(|state| {
            use std::ops::Bound;
            // Names in order, from just after the last one of the
            // previous page: each job once, whatever comes and goes
            // between pages.
            let start = match &after {
                Some(last) => Bound::Excluded(last.as_str()),
                None => Bound::Included(r.name_prefix.as_str()),
            };
            let mut page = Vec::with_capacity(size);
            let mut more = false;
            for j in state.jobs_from(start) {
                if !j.record.name.starts_with(&r.name_prefix) {
                    if j.record.name.as_str() > r.name_prefix.as_str() {
                        break;
                    }
                    continue;
                }
                if !user.sees(&j.record.tenant)
                    || (!r.tenant.is_empty() && j.record.tenant != r.tenant)
                {
                    continue;
                }
                let summary = state.summary(j);
                if r.state != 0 && summary.state != r.state {
                    continue;
                }
                if page.len() == size {
                    more = true;
                    break;
                }
                page.push(summary);
            }
            (page, more)
        });
        let next_page_token = match jobs.last() {
            Some(last) if more => paging::token(&scope, &last.name),
            _ => String::new(),
        };
        Ok(view.respond(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        let r = request.into_inner();
        paging::known::<pb::TaskState>("state", r.state).map_err(ServiceError::from)?;
        let size = paging::size(r.page_size, paging::TASKS_DEFAULT, paging::TASKS_MAX)
            .map_err(ServiceError::from)?;
        let state_filter = r.state.to_string();
        let scope = ["tasks", &r.job, &state_filter];
        let from = match paging::resume(&scope, &r.page_token).map_err(ServiceError::from)? {
            None => 0,
            Some(i) => i.parse::<usize>().map_err(|_| {
                ServiceError::from(sched_core::error::SpecError::new(
                    "page_token",
                    "not a token this server made",
                ))
            })?,
        };
        let view = self.role.view(Some(&r.job)).await?;
        let page = view.with(|state| {
            let j = state.job(&r.job)?;
            Some(may_see(&user, &j.record.tenant, &r.job).map(|()| {
                let mut tasks = Vec::with_capacity(size.min(j.tasks.len()));
                let mut next = None;
                for (i, t) in j.tasks.iter().enumerate().skip(from) {
                    let status = state.task_status(i, t);
                    if r.state != 0 && status.state != r.state {
                        continue;
                    }
                    if tasks.len() == size {
                        next = Some(i);
                        break;
                    }
                    tasks.push(status);
                }
                (tasks, next)
            }))
        });
        let (tasks, next) = page.ok_or(ServiceError::NotFound {
            what: "job",
            name: r.job.clone(),
        })??;
        Ok(view.respond(pb::ListTasksResponse {
            tasks,
            next_page_token: next
                .map(|i| paging::token(&scope, &i.to_string()))
                .unwrap_or_default(),
        }))
    }

    async fn describe_job(
        &self,
        request: Request<pb::DescribeJobRequest>,
    ) -> Result<Response<pb::DescribeJobResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        let name = request.into_inner().name;
        let view = self.role.view(Some(&name)).await?;
        if let Some(tenant) = view.with(|state| state.job(&name).map(|j| j.record.tenant.clone())) {
            may_see(&user, &tenant, &name)?;
        }
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
            let mut status = state.status(j);
            // Inline tasks only as GetJob's full view has them: larger
            // jobs page theirs with ListTasks.
            if j.tasks.len() > paging::FULL_VIEW_MAX_TASKS {
                status.tasks.clear();
            }
            Some(pb::DescribeJobResponse {
                status: Some(status),
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
        let user = self.role.guard().user(&request)?;
        let shared = self.role.leader()?;
        let name = request.into_inner().name;
        let tenant = shared.read(|s| tenant_of(s, &name))?;
        may_change(&user, &tenant, &name, "cancel")?;
        let state = ask(&shared, |reply| Command::Cancel { name, reply }).await?;
        Ok(Response::new(pb::CancelJobResponse {
            state: state as i32,
        }))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        let shared = self.role.leader()?;
        let pb::DeleteJobRequest { name, force } = request.into_inner();
        let tenant = shared.read(|s| tenant_of(s, &name))?;
        may_change(&user, &tenant, &name, "delete")?;
        ask(&shared, |reply| Command::Delete { name, force, reply }).await?;
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    async fn delete_cluster(
        &self,
        request: Request<pb::DeleteClusterRequest>,
    ) -> Result<Response<pb::DeleteClusterResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        user.require(UserRole::Admin, "deleting a cluster")?;
        let shared = self.role.leader()?;
        let name = request.into_inner().name;
        let tasks_taken_back = ask(&shared, |reply| Command::DeleteCluster { name, reply }).await?;
        Ok(Response::new(pb::DeleteClusterResponse {
            tasks_taken_back,
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let user = self.role.guard().user(&request)?;
        let shared = self.role.leader()?;
        let pb::WatchRequest { job, since } = request.into_inner();
        if !job.is_empty() {
            if let Some(tenant) = shared.read(|s| s.job(&job).map(|j| j.record.tenant.clone())) {
                may_see(&user, &tenant, &job)?;
            }
        }
        // The kept events after `since` and every later one, taken under one
        // lock: NOT_FOUND for an unknown job, EXPIRED for a cursor too old.
        let (replay, rx) = shared
            .read(|s| s.resume(&job, since))
            .map_err(crate::events::resume_status)?;
        // A user who sees only some tenants gets only their jobs' events
        // (a job gone by the time its event is read is not shown).
        let visible = {
            let shared = shared.clone();
            move |name: &str| {
                user.tenant.is_none()
                    || user.role == UserRole::Admin
                    || shared.read(|s| s.job(name).is_some_and(|j| user.sees(&j.record.tenant)))
            }
        };
        let (tx, out) = mpsc::channel(256);
        let stop = shared.shutdown.clone();
        tokio::spawn(crate::events::follow(job, replay, rx, visible, tx, stop));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        self.role.guard().user(&request)?;
        let shared = self.role.leader()?;
        let clusters = shared.read(|state| {
            state
                .registry()
                .entries()
                .iter()
                .filter(|e| !e.removed)
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
                    last_heartbeat_time: (e.last_heartbeat_unix_ms > 0)
                        .then(|| wkt::timestamp(e.last_heartbeat_unix_ms)),
                })
                .collect()
        });
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::SetQuotaResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        user.require(UserRole::Admin, "setting a quota")?;
        let shared = self.role.leader()?;
        let r = request.into_inner();
        let q = r
            .quota
            .ok_or_else(|| Status::invalid_argument("quota: required"))?;
        let text = sched_core::quota::QuotaText {
            tenant: q.tenant,
            band: q.band,
            cpu: q.cpu.map(sched_core::quantity::QuantityText::Text),
            memory: q.memory.map(sched_core::quantity::QuantityText::Text),
            gpu: q.gpu.map(sched_core::quantity::QuantityText::Text),
            tasks: q.tasks.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        };
        let policy = shared.read(|s| s.policy().priority.clone());
        let ((tenant, band), limit) = text
            .validate("quota", &policy)
            .map_err(ServiceError::from)?;
        let keys = shared.read(|s| s.keys().clone());
        let key = keys.quota(&tenant, &band);
        let write = if r.remove {
            sched_store::Write::delete(key, sched_store::Expect::Any)
        } else {
            let value = serde_json::to_vec(&limit).map_err(|e| Status::internal(e.to_string()))?;
            sched_store::Write::put(key, value, sched_store::Expect::Any)
        };
        // Fenced: a replica deposed since `leader()` above writes nothing.
        shared
            .store
            .commit(&[write])
            .await
            .map_err(ServiceError::from)?;
        shared.write(|s| s.set_quota(&tenant, &band, (!r.remove).then_some(limit)));
        tracing::info!(user = %user.name, %tenant, %band, remove = r.remove, "quota set");
        Ok(Response::new(pb::SetQuotaResponse {}))
    }

    async fn list_quotas(
        &self,
        request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        use sched_core::resources::{format_bytes, format_cpu, format_gpu};
        let user = self.role.guard().user(&request)?;
        let shared = self.role.leader()?;
        let quotas = shared.read(|s| {
            s.quotas()
                .iter()
                .filter(|(tenant, _, _)| user.sees(tenant))
                .map(|(tenant, band, l)| {
                    let used = s.usage(tenant, band);
                    pb::Quota {
                        tenant: tenant.to_string(),
                        band: band.to_string(),
                        cpu: l.cpu.map(format_cpu),
                        memory: l.memory.map(format_bytes),
                        gpu: l.gpu.map(format_gpu),
                        tasks: l.tasks,
                        used: Some(to_pb_resources(&used.resources)),
                        used_tasks: used.tasks,
                    }
                })
                .collect()
        });
        Ok(Response::new(pb::ListQuotasResponse { quotas }))
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let user = self.role.guard().user(&request)?;
        user.require(UserRole::Admin, "applying a policy")?;
        // Only the leader changes the stored policy; a standby names it.
        self.role.leader()?;
        let yaml = request.into_inner().yaml;
        let policy = match sched_core::policy::Policy::from_yaml(&yaml) {
            Ok(p) => p,
            Err(e) => {
                self.role
                    .refuse_policy(format!("applied by {}: {e}", user.name));
                return Err(ServiceError::from(e).into());
            }
        };
        let live = self
            .role
            .set_policy(
                policy,
                crate::policy::Source::Applied {
                    user: user.name.clone(),
                },
            )
            .await?;
        Ok(Response::new(pb::ApplyPolicyResponse {
            policy: Some(policy_status(&live)),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyStatus>, Status> {
        self.role.guard().user(&request)?;
        // The leader's is the one deciding; a standby names the leader.
        self.role.leader()?;
        Ok(Response::new(policy_status(&self.role.policy())))
    }
}

fn policy_status(live: &crate::policy::LivePolicy) -> pb::PolicyStatus {
    let (refused_at, refused) = match live.last_refused() {
        Some((at, why)) => (Some(wkt::timestamp(*at)), why.clone()),
        None => (None, String::new()),
    };
    pb::PolicyStatus {
        yaml: live.policy().to_yaml(),
        source: live.source().to_string(),
        load_time: Some(wkt::timestamp(live.loaded_unix_ms())),
        reloads: live.reloads(),
        last_refused: refused,
        last_refusal_time: refused_at,
        deferred: live.deferred(),
    }
}
