//! The public API's v1 semantics (issue 14), against a real scheduler and
//! etcd: error codes with `google.rpc` details (ALREADY_EXISTS for a
//! name, a reused submission id refused, a Submit batch all or nothing,
//! unknown enum values refused), paging (ListJobs, ListTasks, GetJob's
//! summary view) and times and durations as the well-known types.

use std::collections::BTreeSet;

use sched_proto::pb;
use sched_tests::{schedctl_command, start_etcd, Scheduler};
use tonic::Code;
use tonic_types::StatusExt;

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn spec(name: &str, tasks: u32) -> pb::JobSpec {
    pb::JobSpec {
        name: name.to_string(),
        tasks,
        resources: Some(pb::ResourceRequest {
            cpu: "100m".into(),
            memory: "32Mi".into(),
            disk: None,
            gpu: None,
        }),
        command: vec!["true".into()],
        ..Default::default()
    }
}

fn submit(id: &str, jobs: Vec<pb::JobSpec>) -> pb::SubmitRequest {
    pb::SubmitRequest {
        submission_id: id.to_string(),
        jobs,
        ..Default::default()
    }
}

/// The field violations of a status's `google.rpc.BadRequest`.
fn bad_fields(s: &tonic::Status) -> Vec<String> {
    s.get_details_bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn reason(s: &tonic::Status) -> String {
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    assert_eq!(info.domain, "clustersched.v1");
    info.reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn errors_have_the_right_codes_and_details_and_submit_is_all_or_nothing() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let mut c = sched.client().await;

    c.submit(submit("s1", vec![spec("web", 2)])).await.unwrap();
    // The same submission again: idempotent.
    c.submit(submit("s1", vec![spec("web", 2)])).await.unwrap();

    // The name under another submission: ALREADY_EXISTS, naming the field.
    let e = c
        .submit(submit("s2", vec![spec("web", 2)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(reason(&e), "ALREADY_EXISTS");
    assert_eq!(bad_fields(&e), ["jobs[0].name"]);

    // The same submission id with another spec: refused, saying what
    // differs; the job keeps its first spec.
    let e = c
        .submit(submit("s1", vec![spec("web", 3)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(reason(&e), "SUBMISSION_ID_REUSED");
    assert!(e.message().contains("jobs[0].tasks"), "{}", e.message());
    let web = c
        .get_job(pb::GetJobRequest {
            name: "web".into(),
            view: pb::JobView::Summary as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(web.summary.unwrap().tasks, 2);

    // A batch whose last job is too large to store (a 3 MB argument):
    // INVALID_ARGUMENT naming the field, and none of the batch created.
    let mut batch: Vec<pb::JobSpec> = (0..130).map(|i| spec(&format!("b-{i}"), 1)).collect();
    let mut big = spec("b-130", 1);
    big.command = vec!["echo".into(), "x".repeat(3_000_000)];
    batch.push(big);
    let e = c.submit(submit("big", batch)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(reason(&e), "INVALID_FIELD");
    assert_eq!(bad_fields(&e), ["jobs[130].command"]);
    let jobs = sched_tests::list_all_jobs!(c).unwrap().into_inner().jobs;
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["web"], "a refused batch left jobs behind");

    // A batch with a name in use: ALREADY_EXISTS, and none created.
    let batch = vec![spec("fresh-1", 1), spec("web", 1), spec("fresh-2", 1)];
    let e = c.submit(submit("s3", batch)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(bad_fields(&e), ["jobs[1].name"]);
    assert!(c
        .get_job(pb::GetJobRequest {
            name: "fresh-1".into(),
            view: 0,
        })
        .await
        .is_err_and(|e| e.code() == Code::NotFound));

    // Unknown enum values: INVALID_ARGUMENT naming the field.
    let e = c
        .list_jobs(pb::ListJobsRequest {
            state: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(bad_fields(&e), ["state"]);
    let e = c
        .get_job(pb::GetJobRequest {
            name: "web".into(),
            view: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&e), ["view"]);
    let e = c
        .list_tasks(pb::ListTasksRequest {
            job: "web".into(),
            state: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&e), ["state"]);
    // A token from another list, and a negative page size.
    let e = c
        .list_jobs(pb::ListJobsRequest {
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&e), ["page_token"]);
    let e = c
        .list_jobs(pb::ListJobsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&e), ["page_size"]);

    // An unknown job: NOT_FOUND with ErrorInfo and ResourceInfo.
    let e = c
        .list_tasks(pb::ListTasksRequest {
            job: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(reason(&e), "NOT_FOUND");
    assert_eq!(e.get_details_resource_info().unwrap().resource_name, "nope");

    // Times and durations are the well-known types: durations come back as
    // submitted, times are the scheduler's clock (the same as ours here),
    // and a duration finer than a millisecond is refused, naming it.
    let ms = |d: std::time::Duration| d.as_secs() as i64 * 1000 + i64::from(d.subsec_millis());
    let now_ms = || ms(std::time::UNIX_EPOCH.elapsed().unwrap());
    let backoff = pb::Duration {
        seconds: 1,
        nanos: 500_000_000,
    };
    let ttl = pb::Duration {
        seconds: 90,
        nanos: 0,
    };
    let mut timed = spec("timed", 1);
    timed.restart = Some(pb::RestartPolicy {
        backoff: Some(backoff),
        ..Default::default()
    });
    timed.ttl_after_finished = Some(ttl);
    let before = now_ms();
    c.submit(submit("s-timed", vec![timed.clone()]))
        .await
        .unwrap();
    let after = now_ms();
    let d = c
        .describe_job(pb::DescribeJobRequest {
            name: "timed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = d.status.unwrap();
    let spec_back = status.spec.unwrap();
    assert_eq!(spec_back.restart.unwrap().backoff, Some(backoff));
    assert_eq!(spec_back.ttl_after_finished, Some(ttl));
    let submitted = status.summary.unwrap().submit_time.expect("a submit_time");
    let submitted = sched_proto::wkt::unix_ms(&submitted);
    assert!(
        (before..=after).contains(&submitted),
        "{before} <= {submitted} <= {after}"
    );
    let first = d.events.first().expect("a submitted event");
    let at = sched_proto::wkt::unix_ms(first.event_time.as_ref().expect("an event_time"));
    assert!(at >= before, "{at} before {before}");
    timed.name = "timed-2".into();
    timed.restart.as_mut().unwrap().backoff = Some(pb::Duration {
        seconds: 0,
        nanos: 1,
    });
    let e = c
        .submit(submit("s-timed-2", vec![timed]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(bad_fields(&e), ["jobs[0].restart.backoff"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn lists_page_through_every_job_and_task_exactly_once() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let mut c = sched.client().await;

    const JOBS: usize = 2500;
    for chunk in 0..5 {
        let specs = (0..JOBS / 5)
            .map(|i| {
                let n = chunk * (JOBS / 5) + i;
                let mut s = spec(&format!("job-{n:05}"), 1);
                s.tenant = Some(if n.is_multiple_of(2) { "even" } else { "odd" }.into());
                s
            })
            .collect();
        c.submit(submit(&format!("c{chunk}"), specs)).await.unwrap();
    }
    c.submit(submit("big", vec![spec("big", 5000)]))
        .await
        .unwrap();

    // Every job once, in name order, 100 a page by default.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_jobs(pb::ListJobsRequest {
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.jobs.len() <= 100);
        pages += 1;
        seen.extend(r.jobs.into_iter().map(|j| j.name));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen.len(), JOBS + 1);
    assert_eq!(pages, (JOBS + 1).div_ceil(100));
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a job listed twice");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "not in name order");

    // Filters: a name prefix and a tenant, paged with a small page size; a
    // token is refused with other filters.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_jobs(pb::ListJobsRequest {
                page_size: 7,
                page_token: token.clone(),
                name_prefix: "job-001".into(),
                tenant: "odd".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(r.jobs.into_iter().map(|j| (j.name, j.tenant)));
        if r.next_page_token.is_empty() {
            break;
        }
        if seen.len() == 7 {
            let e = c
                .list_jobs(pb::ListJobsRequest {
                    page_size: 7,
                    page_token: r.next_page_token.clone(),
                    name_prefix: "job-002".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        }
        token = r.next_page_token;
    }
    // job-00100 .. job-00199, the odd ones.
    assert_eq!(seen.len(), 50);
    assert!(seen
        .iter()
        .all(|(n, t)| n.starts_with("job-001") && t == "odd"));
    // A state filter: every job is pending (no cluster).
    let pending = c
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Pending as i32,
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.jobs.len(), 1000, "page size capped at 1000");
    let running = c
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(running.jobs.is_empty() && running.next_page_token.is_empty());

    // GetJob: the summary has no tasks; FULL has them all.
    let summary = c
        .get_job(pb::GetJobRequest {
            name: "big".into(),
            view: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(summary.tasks.is_empty());
    assert_eq!(summary.summary.unwrap().tasks, 5000);
    let full = c
        .get_job(pb::GetJobRequest {
            name: "big".into(),
            view: pb::JobView::Full as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.tasks.len(), 5000);

    // ListTasks: 5,000 tasks, 1,000 a page by default, each index once.
    let mut indexes = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_tasks(pb::ListTasksRequest {
                job: "big".into(),
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.tasks.len() <= 1000);
        pages += 1;
        indexes.extend(r.tasks.iter().map(|t| t.index));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 5);
    assert_eq!(indexes, (0..5000).collect::<Vec<u32>>());
    // Filtered by state: all pending, none running.
    let running = c
        .list_tasks(pb::ListTasksRequest {
            job: "big".into(),
            state: pb::TaskState::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(running.tasks.is_empty() && running.next_page_token.is_empty());

    // A job too large for the full view: refused there, no tasks inline in
    // DescribeJob; `schedctl get job -o json` still prints every task,
    // paging underneath.
    c.submit(submit("huge", vec![spec("huge", 10_001)]))
        .await
        .unwrap();
    let e = c
        .get_job(pb::GetJobRequest {
            name: "huge".into(),
            view: pb::JobView::Full as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(reason(&e), "TOO_MANY_TASKS");
    let d = c
        .describe_job(pb::DescribeJobRequest {
            name: "huge".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.status.unwrap().tasks.is_empty());
    let out = schedctl_command()
        .args(["--server", &sched.url()])
        .args(["get", "job", "huge", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = json["tasks"].as_array().expect("tasks[]");
    assert_eq!(tasks.len(), 10_001);
    assert_eq!(tasks[10_000]["index"], 10_000);
}
