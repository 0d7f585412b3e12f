//! The gRPC request decoders: random bytes and random messages never make
//! the scheduler panic, and every refusal names a field.

use global_scheduler::service::{classes_from_pb, specs_of};
use proptest::prelude::*;
use prost::Message;
use sched_proto::pb;

fn named(e: &sched_core::error::SpecError) -> bool {
    !e.field.is_empty() && !e.reason.is_empty()
}

fn job_spec() -> impl Strategy<Value = pb::JobSpec> {
    (
        "[a-z0-9-]{0,12}|.{0,8}",
        any::<u32>(),
        "[-0-9.mkKMGTi]{0,10}",
        "[-0-9.mkKMGTi]{0,10}",
        prop::option::of(any::<u32>()),
        prop::option::of("[a-z-]{0,8}"),
        prop::collection::vec(".{0,6}", 0..3),
        prop::option::of((any::<i64>(), any::<i32>())),
    )
        .prop_map(
            |(name, tasks, cpu, memory, priority, locality, command, ttl)| pb::JobSpec {
                name,
                tasks,
                resources: Some(pb::ResourceRequest {
                    cpu,
                    memory,
                    disk: None,
                    gpu: None,
                }),
                priority,
                locality,
                constraints: Default::default(),
                command,
                ttl_after_finished: ttl.map(|(seconds, nanos)| pb::Duration { seconds, nanos }),
                ..Default::default()
            },
        )
}

fn with_durations(backoff: pb::Duration, ttl: pb::Duration) -> pb::SubmitRequest {
    pb::SubmitRequest {
        jobs: vec![pb::JobSpec {
            name: "j".into(),
            tasks: 1,
            resources: Some(pb::ResourceRequest {
                cpu: "1".into(),
                memory: "1Gi".into(),
                ..Default::default()
            }),
            command: vec!["true".into()],
            restart: Some(pb::RestartPolicy {
                backoff: Some(backoff),
                ..Default::default()
            }),
            ttl_after_finished: Some(ttl),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn durations_from_the_api_are_whole_milliseconds_up_to_365_days() {
    let d = |seconds, nanos| pb::Duration { seconds, nanos };
    let specs = specs_of(with_durations(d(1, 500_000_000), d(86_400, 0)), 10).unwrap();
    assert_eq!(specs[0].restart.backoff.map(|s| s.ms()), Some(1500));
    assert_eq!(
        specs[0].ttl_after_finished.map(|s| s.ms()),
        Some(86_400_000)
    );
    for (backoff, ttl, field, why) in [
        (d(-1, 0), d(1, 0), "jobs[0].restart.backoff", "negative"),
        (
            d(0, 1),
            d(1, 0),
            "jobs[0].restart.backoff",
            "not a whole number of milliseconds",
        ),
        (
            d(1, 0),
            d(366 * 86_400, 0),
            "jobs[0].ttl_after_finished",
            "longer than 365 days",
        ),
        (
            d(1, 0),
            d(0, 2_000_000_000),
            "jobs[0].ttl_after_finished",
            "out of range",
        ),
    ] {
        let e = specs_of(with_durations(backoff, ttl), 10).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(why), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bytes_decode_or_fail_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(req) = pb::SubmitRequest::decode(bytes.as_slice()) {
            if let Err(e) = specs_of(req, 10_000) {
                prop_assert!(named(&e), "{e:?}");
            }
        }
        if let Ok(req) = pb::RegisterClusterRequest::decode(bytes.as_slice()) {
            if let Err(e) = classes_from_pb(req.classes) {
                prop_assert!(named(&e), "{e:?}");
            }
        }
        let _ = pb::HeartbeatRequest::decode(bytes.as_slice());
        let _ = pb::ReportRequest::decode(bytes.as_slice());
        let _ = pb::RegisterNodeRequest::decode(bytes.as_slice());
        let _ = pb::NodeReportRequest::decode(bytes.as_slice());
    }

    #[test]
    fn random_submissions_are_validated_with_named_fields(jobs in prop::collection::vec(job_spec(), 0..4), yaml in ".{0,40}") {
        for req in [
            pb::SubmitRequest { yaml: String::new(), jobs: jobs.clone(), submission_id: "x".into() },
            pb::SubmitRequest { yaml: yaml.clone(), jobs: Vec::new(), submission_id: "x".into() },
            pb::SubmitRequest { yaml, jobs, submission_id: String::new() },
        ] {
            if let Err(e) = specs_of(req, 10_000) {
                prop_assert!(named(&e), "{e:?}");
            }
        }
    }

    #[test]
    fn random_machine_classes_are_validated(
        names in prop::collection::vec(".{0,10}", 0..4),
        cpu in any::<u64>(),
        memory in any::<u64>(),
        count in any::<u32>(),
    ) {
        let classes = names
            .into_iter()
            .map(|name| pb::MachineClassStatus {
                name,
                capacity: Some(pb::Resources { cpu_millis: cpu, memory_bytes: memory, disk_bytes: 0, gpu_millis: 0 }),
                labels: Default::default(),
                count,
            })
            .collect();
        if let Err(e) = classes_from_pb(classes) {
            prop_assert!(named(&e), "{e:?}");
        }
    }
}
