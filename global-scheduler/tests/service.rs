//! The service in process: `run` on port 0 over the in-memory store.

use std::sync::Arc;
use std::time::Duration;

use global_scheduler::Config;
use sched_proto::pb;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_store::{MemStore, Store};
use tokio_util::sync::CancellationToken;

struct Running {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), global_scheduler::error::RunError>>,
}

async fn start(store: Arc<dyn Store>, config: Config) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(global_scheduler::run(
        listener,
        store,
        config,
        shutdown.clone(),
    ));
    Running {
        url,
        shutdown,
        task,
    }
}

impl Running {
    /// A client, once this replica leads.
    async fn client(&self) -> SchedulerServiceClient<tonic::transport::Channel> {
        for _ in 0..250 {
            if let Ok(mut c) = SchedulerServiceClient::connect(self.url.clone()).await {
                if c.list_clusters(pb::ListClustersRequest {}).await.is_ok() {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} does not lead", self.url);
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn job(name: &str, tasks: u32) -> pb::JobSpec {
    pb::JobSpec {
        name: name.to_string(),
        tasks,
        resources: Some(pb::ResourceRequest {
            cpu: "250m".to_string(),
            memory: "128Mi".to_string(),
            disk: None,
            gpu: None,
        }),
        priority: None,
        locality: None,
        constraints: Default::default(),
        command: vec!["true".to_string()],
        ..Default::default()
    }
}

fn submit(jobs: Vec<pb::JobSpec>, id: &str) -> pb::SubmitRequest {
    pb::SubmitRequest {
        yaml: String::new(),
        jobs,
        submission_id: id.to_string(),
    }
}

#[tokio::test]
async fn jobs_survive_a_restart_on_the_same_store() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let s = start(store.clone(), Config::new(Default::default())).await;
    let mut c = s.client().await;
    c.submit(submit(vec![job("a", 3), job("b", 5)], "x"))
        .await
        .unwrap();
    s.stop().await;

    let s = start(store.clone(), Config::new(Default::default())).await;
    let mut c = s.client().await;
    let jobs = c
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(jobs[1].counts.unwrap().pending, 5);
    // The same submission again is a retry, not a duplicate.
    c.submit(submit(vec![job("a", 3), job("b", 5)], "x"))
        .await
        .unwrap();
    assert_eq!(store.list("/sched/jobs/").await.unwrap().items.len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_all_land_once() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let s = start(store.clone(), Config::new(Default::default())).await;
    let c = s.client().await;
    let calls = (0..300).map(|i| {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.submit(submit(vec![job(&format!("j{i}"), 100)], &format!("s{i}")))
                .await
                .map(|_| ())
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap().unwrap();
    }
    assert_eq!(store.list("/sched/jobs/").await.unwrap().items.len(), 300);
    s.stop().await;
}

#[tokio::test]
async fn a_submission_with_one_bad_job_writes_none_of_them() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let s = start(store.clone(), Config::new(Default::default())).await;
    let mut c = s.client().await;
    let mut bad = job("b", 1);
    bad.resources.as_mut().unwrap().memory = "lots".to_string();
    let err = c
        .submit(submit(vec![job("a", 1), bad], "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("jobs[1].resources.memory"),
        "{}",
        err.message()
    );
    assert!(store.list("/sched/jobs/").await.unwrap().items.is_empty());
    s.stop().await;
}

#[test]
fn the_binary_refuses_a_bad_policy_file_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "global:\n  scorers: [{name: locality, weight: 0}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_global-scheduler"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--policy",
            policy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("weight"), "{stderr}");
}
