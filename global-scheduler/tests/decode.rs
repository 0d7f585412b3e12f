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
    )
        .prop_map(
            |(name, tasks, cpu, memory, priority, locality, command)| pb::JobSpec {
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
                ..Default::default()
            },
        )
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
