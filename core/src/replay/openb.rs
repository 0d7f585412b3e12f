//! The Alibaba `openb` trace files, read as they are
//! (`cluster-trace-gpu-v2023/csv/`, the trace of Weng et al., USENIX ATC
//! 2023).
//!
//! - Machines (`openb_node_list_*.csv`): `sn,cpu_milli,memory_mib,gpu,model`.
//!   They make one cluster; each machine keeps its `sn` as its name.
//!   Identical machines share a class (the packer's index is per class).
//! - Pods (`openb_pod_list_*.csv`): `name,cpu_milli,memory_mib,num_gpu,
//!   gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,
//!   scheduled_time`. Each row is one single-task job named after the pod:
//!   `num_gpu` 1 with `gpu_milli` below 1000 is a share of one device,
//!   otherwise `num_gpu` whole devices; `gpu_spec` (`V100M16|V100M32`) is a
//!   GPU model constraint; creation and deletion times (seconds) are the
//!   arrival and departure.
//!
//! Columns are found by their header name; a bad value is an error naming
//! the line and the column. No field of these files is quoted, so a line
//! splits on commas.

use std::collections::BTreeMap;

use crate::cluster::{Cluster, ClusterId};
use crate::error::SpecError;
use crate::gpu::{GpuDemand, GPU_MODEL_LABEL};
use crate::labels::Labels;
use crate::locality::{Locality, LocationId};
use crate::machine::MachineClass;
use crate::replay::ReplayTask;
use crate::resources::Resources;
use crate::topology::{check_gpu_model, Topology};

const MIB: u64 = 1 << 20;

/// A trace's machines: one cluster, and each machine's `sn` in the cell's
/// machine order (class by class).
#[derive(Debug, Clone)]
pub struct TraceMachines {
    pub topology: Topology,
    pub names: Vec<String>,
}

struct Table<'a> {
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

fn table(text: &str) -> Result<Table<'_>, SpecError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, head)) = lines.next() else {
        return Err(SpecError::new(
            "line 1",
            "empty file: a header line is required",
        ));
    };
    let header: Vec<&str> = head.split(',').map(str::trim).collect();
    let mut rows = Vec::new();
    for (i, l) in lines {
        let cells: Vec<&str> = l.split(',').map(str::trim).collect();
        if cells.len() != header.len() {
            return Err(SpecError::new(
                format!("line {}", i + 1),
                format!("{} fields, the header has {}", cells.len(), header.len()),
            ));
        }
        rows.push((i + 1, cells));
    }
    Ok(Table { header, rows })
}

impl Table<'_> {
    fn column(&self, name: &str) -> Result<usize, SpecError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| SpecError::new("line 1", format!("no column {name:?} in the header")))
    }
}

fn number(line: usize, column: &str, v: &str) -> Result<u64, SpecError> {
    v.parse::<u64>().map_err(|_| {
        SpecError::new(
            format!("line {line}, {column}"),
            format!("{v:?} is not a whole number"),
        )
    })
}

/// Reads a machine list into one cluster named `cluster` at a location of
/// the same name.
pub fn parse_machines(text: &str, cluster: &str) -> Result<TraceMachines, SpecError> {
    let t = table(text)?;
    let (sn, cpu, mem, gpu, model) = (
        t.column("sn")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("gpu")?,
        t.column("model")?,
    );
    // (cpu, memory, gpus, model) -> class index, in first-seen order.
    let mut kinds: BTreeMap<(u64, u64, u64, String), usize> = BTreeMap::new();
    let mut classes: Vec<(MachineClass, Vec<String>)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (line, r) in &t.rows {
        let name = r[sn];
        if name.is_empty() {
            return Err(SpecError::new(
                format!("line {line}, sn"),
                "empty machine name",
            ));
        }
        if !seen.insert(name) {
            return Err(SpecError::new(
                format!("line {line}, sn"),
                format!("duplicate machine {name:?}"),
            ));
        }
        let c = number(*line, "cpu_milli", r[cpu])?;
        let m = number(*line, "memory_mib", r[mem])?;
        let g = number(*line, "gpu", r[gpu])?;
        if c == 0 || m == 0 {
            return Err(SpecError::new(
                format!(
                    "line {line}, {}",
                    if c == 0 { "cpu_milli" } else { "memory_mib" }
                ),
                "must be greater than zero",
            ));
        }
        let mut labels = Labels::new();
        let model_name = match r[model] {
            "" | "nan" => String::new(),
            s => s.to_string(),
        };
        if !model_name.is_empty() {
            if g == 0 {
                return Err(SpecError::new(
                    format!("line {line}, model"),
                    "a machine without GPUs has no GPU model",
                ));
            }
            check_gpu_model(&format!("line {line}, model"), &model_name, false)?;
            labels.insert(GPU_MODEL_LABEL.to_string(), model_name.clone());
        }
        let key = (c, m, g, model_name);
        let k = match kinds.get(&key) {
            Some(&k) => k,
            None => {
                let k = classes.len();
                kinds.insert(key, k);
                classes.push((
                    MachineClass {
                        name: format!("k{k}"),
                        count: 0,
                        capacity: Resources::new(c, m * MIB).with_gpu(g * 1000),
                        labels,
                    },
                    Vec::new(),
                ));
                k
            }
        };
        classes[k].0.count += 1;
        classes[k].1.push(name.to_string());
    }
    if classes.is_empty() {
        return Err(SpecError::new("line 2", "no machines"));
    }
    let names = classes
        .iter()
        .flat_map(|(_, n)| n.iter().cloned())
        .collect();
    let topology = Topology {
        locality: Locality::new(vec![cluster.to_string()], &[]),
        clusters: vec![Cluster {
            id: ClusterId(0),
            name: cluster.to_string(),
            location: LocationId(0),
            classes: classes.into_iter().map(|(c, _)| c).collect(),
        }],
    };
    Ok(TraceMachines { topology, names })
}

/// Reads a pod list: one single-task job per row, named after the pod.
pub fn parse_pods(text: &str) -> Result<Vec<ReplayTask>, SpecError> {
    let t = table(text)?;
    let (name, cpu, mem, num_gpu, gpu_milli, spec, created, deleted) = (
        t.column("name")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("num_gpu")?,
        t.column("gpu_milli")?,
        t.column("gpu_spec")?,
        t.column("creation_time")?,
        t.column("deletion_time")?,
    );
    let mut tasks = Vec::with_capacity(t.rows.len());
    for (line, r) in &t.rows {
        let c = number(*line, "cpu_milli", r[cpu])?;
        let m = number(*line, "memory_mib", r[mem])?;
        let n = number(*line, "num_gpu", r[num_gpu])?;
        let g = number(*line, "gpu_milli", r[gpu_milli])?;
        let gpu = match (n, g) {
            (0, _) => 0,
            (1, g) if (1..=1000).contains(&g) => g,
            (n, 1000) => n * 1000,
            _ => {
                return Err(SpecError::new(
                    format!("line {line}, gpu_milli"),
                    format!(
                        "{g} with num_gpu {n}: a share (1..999) is of one device; several devices are whole (1000)"
                    ),
                ))
            }
        };
        debug_assert!(GpuDemand::parse(gpu).is_ok());
        let mut constraints = Labels::new();
        match r[spec] {
            "" | "nan" => {}
            s => {
                check_gpu_model(&format!("line {line}, gpu_spec"), s, true)?;
                constraints.insert(GPU_MODEL_LABEL.to_string(), s.to_string());
            }
        }
        let arrival = number(*line, "creation_time", r[created])?;
        let departure = match r[deleted] {
            "" | "nan" => None,
            d => Some(number(*line, "deletion_time", d)?.max(arrival)),
        };
        let job = r[name];
        if job.is_empty() {
            return Err(SpecError::new(
                format!("line {line}, name"),
                "empty pod name",
            ));
        }
        tasks.push(ReplayTask {
            job: job.to_string(),
            task: 0,
            request: Resources::new(c, m * MIB).with_gpu(gpu),
            constraints,
            arrival_ms: arrival * 1000,
            departure_ms: departure.map(|d| d * 1000),
        });
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_machines_and_pods_as_the_trace_writes_them() {
        let nodes = "sn,cpu_milli,memory_mib,gpu,model\n\
                     n0,32000,262144,0,\n\
                     n1,96000,786432,8,V100M32\n\
                     n2,32000,262144,0,\n";
        let t = parse_machines(nodes, "openb").unwrap();
        assert_eq!(t.names, ["n0", "n2", "n1"]);
        let c = &t.topology.clusters[0].classes;
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].capacity.gpu.0, 8000);
        assert_eq!(c[1].labels[GPU_MODEL_LABEL], "V100M32");

        let pods = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
                    p0,4000,15258,1,220,,BE,Running,9679175,9973826,9679175\n\
                    p1,16000,32768,1,1000,V100M16|V100M32,LS,Running,9967058,9968575,9967063\n\
                    p2,88000,327680,8,1000,,Burstable,Succeeded,5,,\n";
        let p = parse_pods(pods).unwrap();
        assert_eq!(p[0].request.gpu.0, 220);
        assert_eq!(p[0].arrival_ms, 9_679_175_000);
        assert_eq!(p[1].constraints[GPU_MODEL_LABEL], "V100M16|V100M32");
        assert_eq!(p[2].request.gpu.0, 8000);
        assert_eq!(p[2].departure_ms, None);

        let bad = pods.replace("p2,88000,327680,8,1000", "p2,88000,327680,2,500");
        let e = parse_pods(&bad).unwrap_err();
        assert_eq!(e.field, "line 4, gpu_milli");
        let e = parse_machines("sn,cpu_milli,memory_mib,gpu\nn0,1,1,0\n", "x").unwrap_err();
        assert!(e.reason.contains("model"), "{e}");
    }
}
