//! Identity end to end (issue 12), with real etcd and the real binaries, all
//! over mutual TLS: every caller is bound to its certificate, components
//! act only for the name their certificate gives them, users carry tokens
//! whose tenant and role bound what they see and do.

use std::time::Duration;

use sched_proto::pb;
use sched_proto::pb::clusters_client::ClustersClient;
use sched_proto::pb::machines_client::MachinesClient;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_security::tokens::sha256_hex;
use sched_security::{Kind, Tls};
use sched_tests::pki::Pki;
use sched_tests::{channel, eventually, start_etcd, tls_channel, LocalAgent, NodeAgent, Scheduler};
use tonic::transport::Channel;
use tonic::{Code, Request};

const TOPOLOGY: &str = "config/examples/topology.yaml";

/// A user: their certificate and token.
struct User {
    tls: Tls,
    token: &'static str,
}

impl User {
    fn client(&self, url: &str) -> SchedulerServiceClient<Channel> {
        SchedulerServiceClient::new(tls_channel(url, &self.tls))
    }

    /// `msg` with this user's token.
    fn req<T>(&self, msg: T) -> Request<T> {
        with_token(msg, self.token)
    }
}

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn sleep_job(name: &str, tenant: Option<&str>) -> pb::SubmitRequest {
    pb::SubmitRequest {
        submission_id: name.to_string(),
        jobs: vec![pb::JobSpec {
            name: name.to_string(),
            tasks: 1,
            resources: Some(pb::ResourceRequest {
                cpu: "100m".into(),
                memory: "32Mi".into(),
                disk: None,
                gpu: None,
            }),
            command: vec!["sleep".into(), "120".into()],
            tenant: tenant.map(str::to_string),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}"),
        Ok(v) => panic!("{what}: allowed ({v:?})"),
    }
}

/// The state of `job`'s first task, and its machine, as `user` reads it.
async fn task0(user: &User, url: &str, job: &str) -> Option<(i32, String)> {
    let st = user
        .client(url)
        .get_job(user.req(pb::GetJobRequest {
            name: job.into(),
            view: pb::JobView::Full as i32,
        }))
        .await
        .ok()?
        .into_inner();
    let t = st.tasks.first()?;
    Some((t.state, t.machine.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn every_caller_is_bound_to_its_certificate_and_every_user_to_a_tenant() {
    let etcd = start_etcd();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n\
             - {{user: alice, tenant: team-a, role: submitter, sha256: {}}}\n\
             - {{user: bob, tenant: team-b, role: submitter, sha256: {}}}\n\
             - {{user: vic, tenant: team-a, role: viewer, sha256: {}}}\n\
             - {{user: root, tenant: ops, role: admin, sha256: {}}}\n",
            sha256_hex("alice-token"),
            sha256_hex("bob-token"),
            sha256_hex("vic-token"),
            sha256_hex("root-token"),
        ),
    )
    .unwrap();
    let user = |name: &str, token: &'static str| User {
        tls: pki.tls_in(name, Kind::User, name),
        token,
    };
    let (alice, bob, vic, root) = (
        user("alice", "alice-token"),
        user("bob", "bob-token"),
        user("vic", "vic-token"),
        user("root", "root-token"),
    );

    let mut args = pki.flags(Kind::Scheduler, "scheduler");
    args.extend([
        "--tokens".to_string(),
        tokens.display().to_string(),
        "--topology".to_string(),
        TOPOLOGY.to_string(),
        "--heartbeat-interval-ms".to_string(),
        "200".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sched = Scheduler::start_tls(&etcd.url(), &args, root.tls.clone()).await;
    let url = sched.url();
    assert!(url.starts_with("https://"));

    let agent_flags = pki.flags(Kind::Cluster, "east-a");
    let agent_flags: Vec<&str> = agent_flags.iter().map(String::as_str).collect();
    let agent = LocalAgent::start_tls(
        "east-a",
        "us-east",
        &url,
        &etcd.url(),
        &agent_flags,
        Some(root.tls.clone()),
    )
    .await;
    let node_flags = pki.flags(Kind::Node, "m1");
    let node_flags: Vec<&str> = node_flags.iter().map(String::as_str).collect();
    let work = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start_with(
        &agent.url(),
        "m1",
        "2",
        "2Gi",
        work.path().to_path_buf(),
        &node_flags,
    );
    eventually(
        "m1 up at the scheduler",
        Duration::from_secs(30),
        || async {
            let r = root
                .client(&url)
                .list_clusters(root.req(pb::ListClustersRequest {}))
                .await
                .ok()?;
            r.into_inner()
                .clusters
                .iter()
                .any(|c| c.name == "east-a" && c.up && c.machines == 1)
                .then_some(())
        },
    )
    .await;

    // Plaintext, a certificate from another CA, no token, a bad token.
    let plain = format!("http://127.0.0.1:{}", sched.port);
    let r = SchedulerServiceClient::new(channel(&plain))
        .list_jobs(pb::ListJobsRequest::default())
        .await;
    assert!(r.is_err(), "plaintext was answered: {r:?}");
    let stranger = Pki::new().tls(Kind::User, "alice");
    let r = SchedulerServiceClient::new(tls_channel(&url, &stranger))
        .list_jobs(alice.req(pb::ListJobsRequest::default()))
        .await;
    assert!(
        r.is_err(),
        "a certificate of another CA was answered: {r:?}"
    );
    let r = alice
        .client(&url)
        .list_jobs(pb::ListJobsRequest::default())
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    let r = alice
        .client(&url)
        .list_jobs(with_token(pb::ListJobsRequest::default(), "guess"))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    // A token is its user's only: alice's token with bob's certificate.
    denied(
        "alice's token with bob's certificate",
        bob.client(&url)
            .list_jobs(alice.req(pb::ListJobsRequest::default()))
            .await,
    );
    // A component's certificate is not a user's.
    let cluster_cert = pki.tls_in("cluster-user", Kind::Cluster, "east-a");
    denied(
        "a cluster certificate on the user API",
        SchedulerServiceClient::new(tls_channel(&url, &cluster_cert))
            .list_jobs(root.req(pb::ListJobsRequest::default()))
            .await,
    );

    // alice runs a job of team-a.
    alice
        .client(&url)
        .submit(alice.req(sleep_job("a-sleep", None)))
        .await
        .expect("alice submits");
    let (_, machine) = eventually("a-sleep running", Duration::from_secs(30), || async {
        let (state, machine) = task0(&alice, &url, "a-sleep").await?;
        (state == pb::TaskState::Running as i32).then_some(((), machine))
    })
    .await;
    assert_eq!(machine, "m1");
    let status = alice
        .client(&url)
        .get_job(alice.req(pb::GetJobRequest {
            name: "a-sleep".into(),
            view: pb::JobView::Full as i32,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.summary.unwrap().tenant, "team-a");

    // bob (team-b) can neither see nor touch it.
    let b = || bob.client(&url);
    denied(
        "bob reads alice's job",
        b().get_job(bob.req(pb::GetJobRequest {
            name: "a-sleep".into(),
            view: pb::JobView::Full as i32,
        }))
        .await,
    );
    denied(
        "bob describes alice's job",
        b().describe_job(bob.req(pb::DescribeJobRequest {
            name: "a-sleep".into(),
        }))
        .await,
    );
    denied(
        "bob cancels alice's job",
        b().cancel_job(bob.req(pb::CancelJobRequest {
            name: "a-sleep".into(),
        }))
        .await,
    );
    denied(
        "bob reads alice's logs",
        b().task_logs(bob.req(pb::TaskLogsRequest {
            job: "a-sleep".into(),
            index: 0,
            ..Default::default()
        }))
        .await
        .map(|_| ()),
    );
    let seen = b()
        .list_jobs(bob.req(pb::ListJobsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(seen.is_empty(), "bob lists other tenants' jobs: {seen:?}");
    // alice cannot submit for team-b, nor delete a cluster.
    denied(
        "alice submits for team-b",
        alice
            .client(&url)
            .submit(alice.req(sleep_job("a-other", Some("team-b"))))
            .await,
    );
    denied(
        "alice deletes a cluster",
        alice
            .client(&url)
            .delete_cluster(alice.req(pb::DeleteClusterRequest {
                name: "east-a".into(),
            }))
            .await,
    );

    // vic (team-a viewer) reads but cannot change.
    assert!(task0(&vic, &url, "a-sleep").await.is_some());
    denied(
        "a viewer submits",
        vic.client(&url)
            .submit(vic.req(sleep_job("v-sleep", None)))
            .await,
    );
    denied(
        "a viewer cancels",
        vic.client(&url)
            .cancel_job(vic.req(pb::CancelJobRequest {
                name: "a-sleep".into(),
            }))
            .await,
    );
    // The admin sees every tenant's job.
    let all = root
        .client(&url)
        .list_jobs(root.req(pb::ListJobsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(all.len(), 1);

    // A cluster certificate for east-a cannot act for east-b.
    let east_a = ClustersClient::new(tls_channel(
        &url,
        &pki.tls_in("east-a-2", Kind::Cluster, "east-a"),
    ));
    denied(
        "east-a registers as east-b",
        east_a
            .clone()
            .register_cluster(pb::RegisterClusterRequest {
                cluster: "east-b".into(),
                location: "us-east".into(),
                ..Default::default()
            })
            .await,
    );
    denied(
        "east-a heartbeats for east-b",
        east_a
            .clone()
            .heartbeat(pb::HeartbeatRequest {
                cluster: "east-b".into(),
                ..Default::default()
            })
            .await,
    );
    let forged = pb::ReportRequest {
        cluster: "east-a".into(),
        tasks: vec![pb::TaskReport {
            job: "a-sleep".into(),
            index: 0,
            state: pb::TaskState::Succeeded as i32,
            machine: "m1".into(),
            exit_code: Some(0),
            reason: String::new(),
            gpus: String::new(),
        }],
        handed_back: Vec::new(),
    };
    denied(
        "east-a reports for east-b",
        east_a
            .clone()
            .report(pb::ReportRequest {
                cluster: "east-b".into(),
                ..forged.clone()
            })
            .await,
    );
    // A second agent for east-a, with another certificate, is refused
    // while the first is up: registering, and reporting.
    denied(
        "a second east-a registers",
        east_a
            .clone()
            .register_cluster(pb::RegisterClusterRequest {
                cluster: "east-a".into(),
                location: "us-east".into(),
                ..Default::default()
            })
            .await,
    );
    denied(
        "a second east-a reports",
        east_a.clone().report(forged).await,
    );

    // A node certificate for m2 cannot register m1; a second certificate
    // for m1 cannot take over the live m1; a cluster certificate cannot
    // list the agent's machines.
    let spec = |name: &str| pb::MachineSpec {
        name: name.into(),
        capacity: Some(pb::Resources {
            cpu_millis: 1_000_000,
            memory_bytes: 1 << 40,
            disk_bytes: 0,
            gpu_millis: 0,
        }),
        labels: Default::default(),
        gpu_devices: 0,
        gpu_model: String::new(),
    };
    let m2 = MachinesClient::new(tls_channel(&agent.url(), &pki.tls(Kind::Node, "m2")));
    denied(
        "m2 registers as m1",
        m2.clone()
            .register_node(pb::RegisterNodeRequest {
                node: "m1".into(),
                machines: vec![spec("m1")],
                ..Default::default()
            })
            .await,
    );
    denied(
        "m2 registers machine m1",
        m2.clone()
            .register_node(pb::RegisterNodeRequest {
                node: "m2".into(),
                machines: vec![spec("m1")],
                ..Default::default()
            })
            .await,
    );
    let rogue = MachinesClient::new(tls_channel(
        &agent.url(),
        &pki.tls_in("rogue", Kind::Node, "m1"),
    ));
    denied(
        "a rogue m1 registers",
        rogue
            .clone()
            .register_node(pb::RegisterNodeRequest {
                node: "m1".into(),
                machines: vec![spec("m1")],
                ..Default::default()
            })
            .await,
    );
    denied(
        "a cluster certificate lists the agent's machines",
        MachinesClient::new(tls_channel(&agent.url(), &cluster_cert))
            .list_machines(pb::ListMachinesRequest::default())
            .await,
    );

    // Nothing of that changed the task: it still runs, on m1.
    let (state, machine) = task0(&alice, &url, "a-sleep").await.unwrap();
    assert_eq!(
        (state, machine.as_str()),
        (pb::TaskState::Running as i32, "m1")
    );
    // Its owner may read its logs and cancel it.
    alice
        .client(&url)
        .task_logs(alice.req(pb::TaskLogsRequest {
            job: "a-sleep".into(),
            index: 0,
            ..Default::default()
        }))
        .await
        .expect("alice reads her task's output");
    alice
        .client(&url)
        .cancel_job(alice.req(pb::CancelJobRequest {
            name: "a-sleep".into(),
        }))
        .await
        .expect("alice cancels her job");
}
