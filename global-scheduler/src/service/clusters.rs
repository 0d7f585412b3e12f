//! `clustersched.internal.v1.Clusters`: local agents register, heartbeat, take their
//! assignments and report what became of them.

use std::pin::Pin;
use std::sync::Arc;

use sched_proto::pb;
use sched_proto::pb::clusters_server::Clusters;
use sched_proto::shutdown::Until;
use sched_security::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{ask, classes_from_pb, room_from_pb, Role};
use crate::convert::from_pb_resources;
use crate::error::ServiceError;
use crate::hub::Command;
use crate::records::ClusterRecord;
use crate::registry::Heartbeat;
use sched_core::names::check_name;

/// Batches an assignment stream may hold before the agent is cut off.
const STREAM_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct ClustersService {
    role: Arc<Role>,
}

impl ClustersService {
    pub fn new(role: Arc<Role>) -> Self {
        ClustersService { role }
    }
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentBatch, Status>> + Send>>;

impl ClustersService {
    /// The caller must be `cluster`'s agent: its certificate names the
    /// cluster, and is the one that registered it.
    fn check<T>(&self, request: &Request<T>, cluster: &str) -> Result<(), Status> {
        let Some(peer) = self
            .role
            .guard()
            .component(request, Kind::Cluster, cluster)?
        else {
            return Ok(());
        };
        let shared = self.role.leader()?;
        shared
            .write(|s| s.registry_mut().owned_by(cluster, &peer.fingerprint))
            .map_err(|e| {
                tracing::warn!(%cluster, "denied: {e}");
                Status::permission_denied(e)
            })
    }

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
        let peer =
            self.role
                .guard()
                .component(&request, Kind::Cluster, &request.get_ref().cluster)?;
        let r = request.into_inner();
        check_name("cluster", &r.cluster).map_err(ServiceError::from)?;
        if let Some(peer) = &peer {
            // A second agent with another certificate for a cluster that
            // is up is refused, not swapped in; a cluster that timed out
            // may come back with a new certificate.
            shared
                .write(|s| s.registry_mut().claim(&r.cluster, &peer.fingerprint))
                .map_err(|e| {
                    tracing::warn!(cluster = %r.cluster, "denied: {e}");
                    Status::permission_denied(e)
                })?;
        }
        check_name("location", &r.location).map_err(ServiceError::from)?;
        let classes = classes_from_pb(r.classes).map_err(ServiceError::from)?;
        let record = ClusterRecord {
            name: r.cluster,
            location: r.location,
            address: r.address,
            classes,
            seen_classes: Vec::new(),
            registered_unix_ms: crate::records::now_unix_ms(),
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
        self.check(&request, &request.get_ref().cluster)?;
        let r = request.into_inner();
        let classes = if r.classes.is_empty() {
            None
        } else {
            Some(classes_from_pb(r.classes).map_err(ServiceError::from)?)
        };
        let room = r
            .room
            .map(|room| room_from_pb(classes.as_deref().unwrap_or_default(), room));
        let hb = Heartbeat {
            room,
            classes,
            allocated: from_pb_resources(r.allocated.as_ref()),
            queued: from_pb_resources(r.queued.as_ref()),
            queue_len: r.queue_len,
            seq_seen: r.seq_seen,
            by_priority: r
                .by_priority
                .iter()
                .map(|u| (u.priority, from_pb_resources(u.allocated.as_ref())))
                .collect(),
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
        self.check(&request, &request.get_ref().cluster)?;
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
        self.check(&request, &request.get_ref().cluster)?;
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
