//! The parsers of job files, policies and topologies never panic on any
//! input, and every refusal names a field and a reason.

use proptest::prelude::*;
use sched_core::error::SpecError;
use sched_core::job::parse_job_file;
use sched_core::policy::Policy;
use sched_core::topology::Topology;

fn example(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn check(r: Result<(), SpecError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(!e.field.is_empty(), "a refusal without a field: {e:?}");
        prop_assert!(!e.reason.is_empty(), "a refusal without a reason: {e:?}");
    }
    Ok(())
}

fn all_parsers(text: &str) -> Result<(), TestCaseError> {
    check(parse_job_file(text).map(|_| ()))?;
    check(Policy::from_yaml(text).map(|_| ()))?;
    check(Topology::from_yaml(text).map(|_| ()))?;
    Ok(())
}

/// A valid document with one random edit: bytes cut out, bytes put in, or
/// a line doubled.
fn mutated(doc: String) -> impl Strategy<Value = String> {
    let len = doc.len();
    (
        0..len.max(1),
        0..16usize,
        prop::collection::vec(any::<char>(), 0..8),
        0..3u8,
    )
        .prop_map(move |(at, cut, insert, kind)| {
            let mut s: Vec<char> = doc.chars().collect();
            let at = at.min(s.len());
            match kind {
                0 => {
                    let end = (at + cut).min(s.len());
                    s.drain(at..end);
                }
                1 => {
                    for (i, c) in insert.iter().enumerate() {
                        s.insert(at + i, *c);
                    }
                }
                _ => {
                    let text: String = s.iter().collect();
                    let lines: Vec<&str> = text.lines().collect();
                    let i = at % lines.len().max(1);
                    let mut out: Vec<&str> = lines.clone();
                    if let Some(l) = lines.get(i) {
                        out.insert(i, l);
                    }
                    return out.join("\n");
                }
            }
            s.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_text_is_refused_cleanly(text in ".{0,300}") {
        all_parsers(&text)?;
    }

    #[test]
    fn random_bytes_are_refused_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        all_parsers(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn mutated_job_files_are_handled(text in mutated(example("config/examples/jobs.yaml"))) {
        check(parse_job_file(&text).map(|_| ()))?;
    }

    #[test]
    fn mutated_policies_are_handled(text in mutated(example("config/policy.yaml"))) {
        check(Policy::from_yaml(&text).map(|_| ()))?;
    }

    #[test]
    fn mutated_topologies_are_handled(text in mutated(example("config/examples/topology.yaml"))) {
        check(Topology::from_yaml(&text).map(|_| ()))?;
    }

    #[test]
    fn quantities_of_any_shape_are_handled(
        cpu in "[-+0-9.eEkKMGTPimu ]{0,24}",
        memory in "[-+0-9.eEkKMGTPimu ]{0,24}",
        tasks in any::<i64>(),
    ) {
        let doc = format!(
            "jobs:\n  - {{name: j, tasks: {tasks}, resources: {{cpu: \"{cpu}\", memory: \"{memory}\"}}}}\n"
        );
        check(parse_job_file(&doc).map(|_| ()))?;
    }
}
