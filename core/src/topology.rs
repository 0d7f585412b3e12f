//! The topology file: locations, the links between them, and the clusters
//! with their classes of machines.
//!
//! ```yaml
//! locations:
//!   - name: us-east
//!   - name: us-west
//! links:                       # undirected, weighted by latency
//!   - {from: us-east, to: us-west, latency_ms: 70}
//! clusters:
//!   - name: east-a
//!     location: us-east
//!     machines:
//!       - {class: std, count: 200, cpu: "32", memory: "128Gi", labels: {ssd: "true"}}
//!       - {class: v100, count: 8, cpu: "96", memory: "768Gi", gpu: 8, gpu_model: V100M32}
//! ```
//!
//! `gpu` counts whole GPU devices; `gpu_model` becomes the machine label
//! `gpu-model` that jobs' `gpu_model` constraints match (see [`crate::gpu`]).

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::cluster::{Cluster, ClusterId};
use crate::error::SpecError;
use crate::gpu::{self, GPU_MODEL_LABEL};
use crate::labels::Labels;
use crate::locality::{Locality, LocationId};
use crate::machine::MachineClass;
use crate::names::check_name;
use crate::quantity::{parse_resources, QuantityText};
use crate::resources::{Bytes, MilliCpu};
use crate::yaml;

/// At most this many machines in one class. Borg's median cell has about
/// 10,000 machines (Verma et al., EuroSys 2015, §2.2); a hundred times that
/// in one class is a typo, not a cell.
pub const MAX_MACHINES_PER_CLASS: i64 = 1_000_000;
/// The largest machine accepted: 100,000 cores and 1 PiB of memory or disk,
/// far beyond any single machine, so only absurd values are refused.
pub const MAX_MACHINE_CPU: MilliCpu = MilliCpu(100_000 * 1000);
pub const MAX_MACHINE_BYTES: Bytes = Bytes(1 << 50);
/// A link slower than a minute is not a network.
pub const MAX_LATENCY_MS: i64 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    locations: Vec<LocationSpec>,
    #[serde(default)]
    links: Vec<LinkSpec>,
    clusters: Vec<ClusterSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationSpec {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkSpec {
    from: String,
    to: String,
    latency_ms: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSpec {
    name: String,
    location: String,
    #[serde(default)]
    machines: Vec<MachineClassSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineClassSpec {
    class: String,
    count: i64,
    cpu: QuantityText,
    memory: QuantityText,
    #[serde(default)]
    disk: Option<QuantityText>,
    #[serde(default)]
    gpu: Option<QuantityText>,
    /// The model of its GPU devices (`V100M32`), kept as the label
    /// [`GPU_MODEL_LABEL`] that jobs' `gpu_model` constraints match.
    #[serde(default)]
    gpu_model: Option<String>,
    #[serde(default)]
    labels: Labels,
}

/// A validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub locality: Locality,
    pub clusters: Vec<Cluster>,
}

impl Topology {
    /// Parses and validates a topology file.
    pub fn from_yaml(text: &str) -> Result<Topology, SpecError> {
        let file: TopologyFile = yaml::from_str(text)?;
        Topology::validate(file)
    }

    fn validate(file: TopologyFile) -> Result<Topology, SpecError> {
        if file.locations.is_empty() {
            return Err(SpecError::new(
                "locations",
                "at least one location is required",
            ));
        }
        let mut names = Vec::with_capacity(file.locations.len());
        for (i, l) in file.locations.iter().enumerate() {
            let field = format!("locations[{i}].name");
            check_name(&field, &l.name)?;
            if names.contains(&l.name) {
                return Err(SpecError::new(
                    field,
                    format!("duplicate location {:?}", l.name),
                ));
            }
            names.push(l.name.clone());
        }
        let find = |field: String, name: &str| -> Result<LocationId, SpecError> {
            names
                .iter()
                .position(|n| n == name)
                .map(|i| LocationId(i as u32))
                .ok_or_else(|| {
                    SpecError::new(
                        field,
                        format!("unknown location {name:?} (known: {})", names.join(", ")),
                    )
                })
        };

        let mut links = Vec::with_capacity(file.links.len());
        let mut seen = BTreeSet::new();
        for (i, l) in file.links.iter().enumerate() {
            let from = find(format!("links[{i}].from"), &l.from)?;
            let to = find(format!("links[{i}].to"), &l.to)?;
            if from == to {
                return Err(SpecError::new(
                    format!("links[{i}].to"),
                    format!(
                        "a link must join two different locations, not {:?} to itself",
                        l.to
                    ),
                ));
            }
            if !seen.insert((from.min(to), from.max(to))) {
                return Err(SpecError::new(
                    format!("links[{i}]"),
                    format!("duplicate link between {:?} and {:?}", l.from, l.to),
                ));
            }
            if !(0..=MAX_LATENCY_MS).contains(&l.latency_ms) {
                return Err(SpecError::new(
                    format!("links[{i}].latency_ms"),
                    format!("{} is out of range 0..={MAX_LATENCY_MS}", l.latency_ms),
                ));
            }
            links.push((from, to, l.latency_ms as u64));
        }

        if file.clusters.is_empty() {
            return Err(SpecError::new(
                "clusters",
                "at least one cluster is required",
            ));
        }
        let mut clusters: Vec<Cluster> = Vec::with_capacity(file.clusters.len());
        for (i, c) in file.clusters.into_iter().enumerate() {
            let field = format!("clusters[{i}]");
            check_name(&format!("{field}.name"), &c.name)?;
            if clusters.iter().any(|k| k.name == c.name) {
                return Err(SpecError::new(
                    format!("{field}.name"),
                    format!("duplicate cluster {:?}", c.name),
                ));
            }
            let location = find(format!("{field}.location"), &c.location)?;
            if c.machines.is_empty() {
                return Err(SpecError::new(
                    format!("{field}.machines"),
                    "at least one class of machines is required",
                ));
            }
            let mut classes: Vec<MachineClass> = Vec::with_capacity(c.machines.len());
            for (j, m) in c.machines.into_iter().enumerate() {
                let mf = format!("{field}.machines[{j}]");
                let class = machine_class(&mf, m)?;
                if classes.iter().any(|k| k.name == class.name) {
                    return Err(SpecError::new(
                        format!("{mf}.class"),
                        format!("duplicate class {:?} in cluster {:?}", class.name, c.name),
                    ));
                }
                classes.push(class);
            }
            clusters.push(Cluster {
                id: ClusterId(i as u32),
                name: c.name,
                location,
                classes,
            });
        }
        Ok(Topology {
            locality: Locality::new(names, &links),
            clusters,
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

fn machine_class(field: &str, m: MachineClassSpec) -> Result<MachineClass, SpecError> {
    check_name(&format!("{field}.class"), &m.class)?;
    if !(1..=MAX_MACHINES_PER_CLASS).contains(&m.count) {
        return Err(SpecError::new(
            format!("{field}.count"),
            format!("{} is out of range 1..={MAX_MACHINES_PER_CLASS}", m.count),
        ));
    }
    let capacity = parse_resources(field, &m.cpu, &m.memory, m.disk.as_ref(), m.gpu.as_ref())?;
    let (cpu, memory, disk) = (capacity.cpu, capacity.memory, capacity.disk);
    if cpu > MAX_MACHINE_CPU {
        return Err(SpecError::new(
            format!("{field}.cpu"),
            format!("{} cores is absurd for one machine", cpu.0 / 1000),
        ));
    }
    for (name, v) in [("memory", memory), ("disk", disk)] {
        if v > MAX_MACHINE_BYTES {
            return Err(SpecError::new(
                format!("{field}.{name}"),
                "more than 1Pi is absurd for one machine",
            ));
        }
    }
    if !capacity.gpu.0.is_multiple_of(u64::from(gpu::DEVICE_MILLI)) {
        return Err(SpecError::new(
            format!("{field}.gpu"),
            format!(
                "{} is not a whole number of GPU devices",
                crate::resources::format_gpu(capacity.gpu)
            ),
        ));
    }
    let mut labels = m.labels;
    if let Some(model) = m.gpu_model {
        let mf = format!("{field}.gpu_model");
        if capacity.gpu.0 == 0 {
            return Err(SpecError::new(
                mf,
                "a machine without GPUs has no GPU model",
            ));
        }
        check_gpu_model(&mf, &model, false)?;
        if labels.get(GPU_MODEL_LABEL).is_some_and(|l| *l != model) {
            return Err(SpecError::new(
                mf,
                format!("disagrees with the label {GPU_MODEL_LABEL}"),
            ));
        }
        labels.insert(GPU_MODEL_LABEL.to_string(), model);
    }
    Ok(MachineClass {
        name: m.class,
        count: m.count as u32,
        capacity,
        labels,
    })
}

/// Checks a GPU model name (`V100M32`), or alternatives joined by `|` when
/// `alternatives` (a job's constraint): letters, digits, `-`, `_`, `.`.
pub fn check_gpu_model(field: &str, model: &str, alternatives: bool) -> Result<(), SpecError> {
    let parts: Vec<&str> = if alternatives {
        model.split('|').collect()
    } else {
        vec![model]
    };
    for p in parts {
        if p.is_empty()
            || p.len() > 63
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(SpecError::new(
                field,
                format!(
                    "{model:?} is not a GPU model{}: letters, digits, '-', '_' and '.', at most 63",
                    if alternatives {
                        " list (models joined by '|')"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    const GOOD: &str = r#"
locations:
  - name: us-east
  - name: us-west
links:
  - {from: us-east, to: us-west, latency_ms: 70}
clusters:
  - name: east-a
    location: us-east
    machines:
      - {class: std, count: 200, cpu: "32", memory: "128Gi", labels: {ssd: "true"}}
  - name: west-a
    location: us-west
    machines:
      - {class: big, count: 10, cpu: 64, memory: "512Gi", gpu: 8}
"#;

    #[test]
    fn gpus_are_whole_devices_with_a_model() {
        let topo = |m: &str| {
            Topology::from_yaml(&format!(
                "locations: [{{name: l}}]\nclusters:\n  - name: c\n    location: l\n    machines:\n      - {{class: g, count: 1, cpu: 8, memory: 64Gi, {m}}}\n"
            ))
        };
        let t = topo("gpu: 8, gpu_model: V100M32").unwrap();
        assert_eq!(t.clusters[0].classes[0].labels[GPU_MODEL_LABEL], "V100M32");
        let e = topo("gpu: 1.5").unwrap_err();
        assert_eq!(e.field, "clusters[0].machines[0].gpu");
        let e = topo("gpu_model: T4").unwrap_err();
        assert_eq!(e.field, "clusters[0].machines[0].gpu_model");
        let e = topo("gpu: 2, gpu_model: \"T4|A10\"").unwrap_err();
        assert_eq!(e.field, "clusters[0].machines[0].gpu_model");
    }

    #[test]
    fn parses_the_design_example() {
        let t = Topology::from_yaml(GOOD).unwrap();
        assert_eq!(t.clusters.len(), 2);
        let east = &t.clusters[0];
        assert_eq!(east.classes[0].capacity, Resources::new(32_000, 128 << 30));
        assert_eq!(east.classes[0].labels["ssd"], "true");
        assert_eq!(t.clusters[1].classes[0].capacity.gpu.0, 8000);
        let (e, w) = (
            t.locality.id("us-east").unwrap(),
            t.locality.id("us-west").unwrap(),
        );
        assert_eq!(t.locality.latency_ms(e, w), Some(70));
    }

    fn err(text: &str) -> SpecError {
        Topology::from_yaml(text).unwrap_err()
    }

    #[test]
    fn refusals_name_the_field() {
        let e = err(&GOOD.replace("location: us-west", "location: eu-west"));
        assert_eq!(e.field, "clusters[1].location");
        assert!(e.reason.contains("unknown location \"eu-west\""), "{e}");

        let e = err(&GOOD.replace("name: west-a", "name: east-a"));
        assert_eq!(e.field, "clusters[1].name");
        assert!(e.reason.contains("duplicate"), "{e}");

        let e = err(&GOOD.replace("count: 200", "count: 0"));
        assert_eq!(e.field, "clusters[0].machines[0].count");

        let e = err(&GOOD.replace("count: 200", "count: -3"));
        assert_eq!(e.field, "clusters[0].machines[0].count");

        let e = err(&GOOD.replace("cpu: \"32\"", "cpu: \"-32\""));
        assert_eq!(e.field, "clusters[0].machines[0].cpu");
        assert!(e.reason.contains("negative"), "{e}");

        let e = err(&GOOD.replace("memory: \"128Gi\"", "memory: \"128GB\""));
        assert_eq!(e.field, "clusters[0].machines[0].memory");

        let e = err(&GOOD.replace("cpu: \"32\"", "cpu: 0"));
        assert_eq!(e.field, "clusters[0].machines[0].cpu");

        let e = err(&GOOD.replace("latency_ms: 70", "latency_ms: -1"));
        assert_eq!(e.field, "links[0].latency_ms");

        let e = err(&GOOD.replace("to: us-west", "to: us-east"));
        assert_eq!(e.field, "links[0].to");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = err(&GOOD.replace("latency_ms: 70", "latency_ms: 70, jitter: 3"));
        assert!(e.to_string().contains("unknown field `jitter`"), "{e}");
        let e = err("locations: [{name: a}]\nclusters: []\nextra: 1\n");
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_refused() {
        let e = err("locations: [\n");
        assert!(!e.reason.is_empty());
    }
}
