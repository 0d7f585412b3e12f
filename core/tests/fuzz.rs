//! The parsers of job files, policies and topologies never panic on any
//! input, and every refusal names a field and a reason. The field is
//! `<document>` (the text is not YAML of the right shape) or a path into the
//! document, such as `jobs[2].resources.cpu`, that begins with one of its
//! top-level keys and, when the text is YAML, leads to a value in it.

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

/// The top-level keys of each kind of document.
const JOBS: &[&str] = &["jobs"];
const POLICY: &[&str] = &["global", "local", "ha", "lifecycle", "priority"];
const TOPOLOGY: &[&str] = &["locations", "links", "clusters"];

/// One step of a field path: `.name` or `[index]`.
#[derive(Debug)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `jobs[2].resources.cpu` into its steps, or `None` if it is not
/// such a path.
fn steps(field: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    let mut rest = field;
    let mut first = true;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let (n, r) = r.split_once(']')?;
            out.push(Step::Index(n.parse().ok()?));
            rest = r;
        } else {
            let r = if first { rest } else { rest.strip_prefix('.')? };
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let (key, r) = r.split_at(end);
            if key.is_empty() || key.contains([']', ' ']) {
                return None;
            }
            out.push(Step::Key(key));
            rest = r;
        }
        first = false;
    }
    Some(out)
}

/// Follows `steps` through the parsed document.
fn resolves(doc: &serde_yaml::Value, steps: &[Step<'_>]) -> bool {
    let mut v = doc;
    for step in steps {
        while let serde_yaml::Value::Tagged(t) = v {
            v = &t.value;
        }
        let next = match step {
            Step::Key(k) => v.as_mapping().and_then(|m| m.get(*k)),
            Step::Index(i) => v.as_sequence().and_then(|s| s.get(*i)),
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    true
}

/// A refusal of `text`, a document whose top-level keys are `keys`, names
/// a reason and a real field of it.
fn check(text: &str, keys: &[&str], r: Result<(), SpecError>) -> Result<(), TestCaseError> {
    let Err(e) = r else { return Ok(()) };
    prop_assert!(!e.reason.is_empty(), "a refusal without a reason: {e:?}");
    if e.field == "<document>" {
        return Ok(());
    }
    let path = steps(&e.field);
    prop_assert!(path.is_some(), "the field is not a path: {e:?}");
    let path = path.unwrap_or_default();
    prop_assert!(
        matches!(path.first(), Some(Step::Key(k)) if keys.contains(k)),
        "the field does not start with one of {keys:?}: {e:?}"
    );
    // serde_yaml names the value it was reading, and validation names the
    // value it checked: either is in the document.
    if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        prop_assert!(
            resolves(&doc, &path),
            "the field is not in the document: {e:?}\n{text}"
        );
    }
    Ok(())
}

fn all_parsers(text: &str) -> Result<(), TestCaseError> {
    check(text, JOBS, parse_job_file(text).map(|_| ()))?;
    check(text, POLICY, Policy::from_yaml(text).map(|_| ()))?;
    check(text, TOPOLOGY, Topology::from_yaml(text).map(|_| ()))?;
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
        check(&text, JOBS, parse_job_file(&text).map(|_| ()))?;
    }

    #[test]
    fn mutated_policies_are_handled(text in mutated(example("config/policy.yaml"))) {
        check(&text, POLICY, Policy::from_yaml(&text).map(|_| ()))?;
    }

    #[test]
    fn mutated_topologies_are_handled(text in mutated(example("config/examples/topology.yaml"))) {
        check(&text, TOPOLOGY, Topology::from_yaml(&text).map(|_| ()))?;
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
        check(&doc, JOBS, parse_job_file(&doc).map(|_| ()))?;
    }
}
