//! Watch you can resume: events are kept in etcd, every event carries a
//! cursor, and a watch resumed with `since` on the next leader gets every
//! later event once; the stream ends UNAVAILABLE when the leader stops; a
//! cursor older than the kept history is refused (EXPIRED), an unknown job
//! is NOT_FOUND; `describe` on the new leader shows the job's history.

use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, start_etcd, ClusterSpec, Scheduler, TestCluster};
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic_types::StatusExt;

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn job(name: &str, tasks: u32) -> pb::SubmitRequest {
    pb::SubmitRequest {
        jobs: vec![pb::JobSpec {
            name: name.into(),
            tasks,
            resources: Some(pb::ResourceRequest {
                cpu: "100m".into(),
                memory: "64Mi".into(),
                disk: None,
                gpu: None,
            }),
            command: vec!["true".into()],
            ..Default::default()
        }],
        submission_id: format!("sub-{name}"),
        ..Default::default()
    }
}

fn watch(job: &str, since: Option<u64>) -> pb::WatchRequest {
    pb::WatchRequest {
        job: job.into(),
        since,
    }
}

/// Reads events until `done` holds for the events read so far.
async fn read_until(
    stream: &mut Streaming<pb::Event>,
    out: &mut Vec<pb::Event>,
    what: &str,
    done: impl Fn(&[pb::Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(out) {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {out:#?}"));
        match next {
            Some(Ok(e)) => out.push(e),
            other => panic!("stream ended waiting for {what}: {other:?}; got {out:#?}"),
        }
    }
}

fn placed_tasks(events: &[pb::Event]) -> usize {
    events
        .iter()
        .filter(|e| e.kind() == pb::EventKind::Placed)
        .map(|e| e.tasks.len())
        .sum()
}

fn has(events: &[pb::Event], kind: pb::EventKind) -> bool {
    events.iter().any(|e| e.kind() == kind)
}

fn cursors(events: &[pb::Event]) -> Vec<(u64, i32)> {
    events.iter().map(|e| (e.cursor, e.kind)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_watch_resumes_on_the_next_leader_without_losing_or_repeating_an_event() {
    let etcd = start_etcd();
    let args = ["--topology", TOPOLOGY, "--heartbeat-interval-ms", "300"];
    let mut a = Scheduler::start(&etcd.url(), &args).await;
    let b = Scheduler::start_standby(&etcd.url(), &args).await;
    assert!(a.leads().await);
    let both = format!("{},{}", a.url(), b.url());
    let _cluster = TestCluster::start(&both, ClusterSpec::new("east-a", "us-east"));
    let mut ca = a.client().await;

    // An unknown job is NOT_FOUND at once (it used to hang).
    let err = ca.watch(watch("nope", None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // `schedctl watch` of every job, across the failover: it resumes by
    // itself.
    let mut cli = sched_tests::schedctl_command()
        .args(["--server", &both, "watch", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut cli_out = sched_tests::Lines::follow(cli.stdout.take().unwrap());
    ca.submit(job("warmup", 1)).await.unwrap();
    cli_out
        .wait_for("\"warmup\"", Duration::from_secs(30))
        .await;

    ca.submit(job("hist", 3)).await.unwrap();
    // From the start: submitted, assigned, placed, with task indices.
    let mut first = Vec::new();
    let mut s = ca.watch(watch("hist", Some(0))).await.unwrap().into_inner();
    read_until(&mut s, &mut first, "3 tasks placed", |e| {
        placed_tasks(e) == 3
    })
    .await;
    assert_eq!(first[0].kind(), pb::EventKind::Submitted, "{first:#?}");
    assert!(has(&first, pb::EventKind::Assigned), "{first:#?}");
    let mut indices: Vec<u32> = first
        .iter()
        .filter(|e| e.kind() == pb::EventKind::Placed)
        .flat_map(|e| e.tasks.clone())
        .collect();
    indices.sort();
    assert_eq!(indices, vec![0, 1, 2]);
    assert!(
        first.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "{first:#?}"
    );

    // SIGTERM on the leader: the stream ends UNAVAILABLE, not OK.
    assert!(a.terminate(Duration::from_secs(15)), "the leader exits");
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(15), s.next()).await {
            Ok(Some(Ok(e))) => first.push(e),
            Ok(other) => break other,
            Err(_) => panic!("the stream did not end after SIGTERM"),
        }
    };
    match end {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        other => panic!("the stream ended with {other:?}, not UNAVAILABLE"),
    }

    // The standby takes over; describe shows the history, not only
    // `recovered`.
    let mut cb = b.client().await;
    eventually("the standby leads", Duration::from_secs(30), || async {
        b.leads().await.then_some(())
    })
    .await;
    let d = cb
        .describe_job(pb::DescribeJobRequest {
            name: "hist".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for kind in [
        pb::EventKind::Submitted,
        pb::EventKind::Assigned,
        pb::EventKind::Placed,
        pb::EventKind::Recovered,
    ] {
        assert!(has(&d.events, kind), "{kind:?} missing: {:#?}", d.events);
    }

    // Resume after the last cursor seen; the new leader adds `recovered`,
    // and a cancel adds `cancelled`.
    let last = first.last().unwrap().cursor;
    let mut resumed = Vec::new();
    let mut s = cb
        .watch(watch("hist", Some(last)))
        .await
        .unwrap()
        .into_inner();
    cb.cancel_job(pb::CancelJobRequest {
        name: "hist".into(),
    })
    .await
    .unwrap();
    read_until(&mut s, &mut resumed, "cancelled", |e| {
        has(e, pb::EventKind::Cancelled)
    })
    .await;
    assert!(has(&resumed, pb::EventKind::Recovered), "{resumed:#?}");

    // Everything the new leader kept, from the start: exactly what the two
    // streams gave, in order, none twice.
    let mut all = Vec::new();
    let mut s = cb.watch(watch("hist", Some(0))).await.unwrap().into_inner();
    read_until(&mut s, &mut all, "the whole history", |e| {
        has(e, pb::EventKind::Cancelled)
    })
    .await;
    let mut seen = first.clone();
    seen.extend(resumed.iter().cloned());
    assert_eq!(
        cursors(&all),
        cursors(&seen),
        "all: {all:#?}\nseen: {seen:#?}"
    );

    // schedctl printed each of the job's events once, none missing.
    cli_out
        .wait_for("\"cancelled\"", Duration::from_secs(30))
        .await;
    let _ = cli.kill();
    let _ = cli.wait();
    let printed: Vec<(u64, String)> = cli_out
        .all()
        .await
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["job"] == "hist")
        .map(|v| {
            (
                v["cursor"].as_u64().unwrap(),
                v["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let kept: Vec<u64> = all.iter().map(|e| e.cursor).collect();
    // Up to the first `cancelled`, as `all` was read.
    let end = printed
        .iter()
        .position(|p| p.1 == "cancelled")
        .map_or(printed.len(), |i| i + 1);
    let printed_cursors: Vec<u64> = printed[..end].iter().map(|p| p.0).collect();
    assert_eq!(printed_cursors, kept, "schedctl printed {printed:#?}");

    // A cursor ahead of the history: OUT_OF_RANGE.
    let err = cb
        .watch(watch("hist", Some(last + 1_000_000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");

    // Delete the job: its events go with it; a watch of every job from
    // before the delete is refused EXPIRED; the job is NOT_FOUND.
    cb.delete_job(pb::DeleteJobRequest {
        name: "hist".into(),
        force: true,
    })
    .await
    .unwrap();
    let err = cb.watch(watch("", Some(0))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let info = err.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, "EXPIRED", "{err:?}");
    let err = cb.watch(watch("hist", Some(0))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let keys = etcd_event_keys(&etcd.url(), "hist").await;
    assert!(keys.is_empty(), "left behind: {keys:?}");
}

async fn etcd_event_keys(url: &str, job: &str) -> Vec<String> {
    let store = sched_store::EtcdStore::connect(&[url.to_string()])
        .await
        .unwrap();
    sched_store::Store::list(&store, &format!("/sched/events/{job}/"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}
