//! Every gRPC server answers `grpc.reflection.v1` (listing its services)
//! and `grpc.health.v1`, so that generic clients can probe it; the local
//! agent's `ListMachines` honours its cluster filter.

use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, free_port, start_etcd, tls_mode, LocalAgent, NodeAgent, Scheduler};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// The services a server lists through reflection.
async fn listed_services(url: &str) -> Result<Vec<String>, tonic::Status> {
    let mut client = ServerReflectionClient::new(sched_tests::channel(url));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers
        .message()
        .await?
        .ok_or_else(|| tonic::Status::internal("no answer"))?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => Err(tonic::Status::internal(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// The health of `service` ("" for the server as a whole).
async fn health(url: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let r = HealthClient::new(sched_tests::channel(url))
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// The full name of `suffix` (e.g. `.SchedulerService`) among `services`.
fn named<'a>(services: &'a [String], suffix: &str) -> &'a str {
    services
        .iter()
        .find(|s| s.ends_with(suffix))
        .unwrap_or_else(|| panic!("no service ending in {suffix} among {services:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn every_server_lists_its_services_and_answers_health() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &[]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let node_port = free_port();
    let listen = format!("127.0.0.1:{node_port}");
    let _node = NodeAgent::start_with(
        &agent.url(),
        "n1",
        "2",
        "1Gi",
        dir.path().join("n1"),
        &["--listen", &listen],
    );
    let scheme = if tls_mode() { "https" } else { "http" };
    let node_url = format!("{scheme}://{listen}");

    // The node agent serves once it has registered; wait for its health.
    eventually(
        "the node agent serving",
        Duration::from_secs(20),
        || async { (health(&node_url, "").await.ok()? == ServingStatus::Serving).then_some(()) },
    )
    .await;

    let servers = [
        (
            "global scheduler",
            sched.url(),
            vec![".SchedulerService", ".Clusters"],
        ),
        ("local agent", agent.url(), vec![".Machines"]),
        ("node agent", node_url.clone(), vec![".Node"]),
    ];
    for (what, url, api) in &servers {
        let services = listed_services(url)
            .await
            .unwrap_or_else(|e| panic!("{what}: reflection failed: {e}"));
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{what}: {services:?}"
        );
        assert!(
            services
                .iter()
                .any(|s| s == "grpc.reflection.v1.ServerReflection"),
            "{what}: {services:?}"
        );
        for suffix in api {
            let name = named(&services, suffix).to_string();
            // Each API service is serving (the scheduler's once it leads).
            eventually(
                &format!("{what}: {name} serving"),
                Duration::from_secs(20),
                || async {
                    (health(url, &name).await.ok()? == ServingStatus::Serving).then_some(())
                },
            )
            .await;
        }
        assert_eq!(
            health(url, "").await.expect("overall health"),
            ServingStatus::Serving,
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn the_local_agent_lists_machines_of_its_own_cluster_only() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &[]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start(&agent.url(), "n1", "2", "1Gi", dir.path().join("n1"));
    let mine = eventually("n1 registered", Duration::from_secs(20), || async {
        let m = agent.list_machines("east-a").await.ok()?;
        (m.len() == 1).then_some(m)
    })
    .await;
    assert_eq!(mine[0].name, "n1");
    // No filter: every machine it has.
    assert_eq!(agent.list_machines("").await.unwrap().len(), 1);
    // Another cluster's name: not this agent's, refused by name.
    let err = agent.list_machines("west-a").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("west-a") && err.message().contains("east-a"),
        "{}",
        err.message()
    );
    // Through the global scheduler, the filter still picks that cluster.
    let through = sched
        .client()
        .await
        .list_machines(pb::ListMachinesRequest {
            cluster: "east-a".to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .machines;
    assert_eq!(through.len(), 1);
}
