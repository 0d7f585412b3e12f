//! Jobs: N identical tasks with one resource request, and the job file.
//!
//! ```yaml
//! jobs:
//!   - name: web                # lowercase letters, digits and '-', at most 63
//!     tasks: 20
//!     resources: {cpu: "1500m", memory: "2Gi"}
//!     priority: 100            # optional (or `band: production`, the band's lowest)
//!     locality: us-east        # optional: a location name
//!     constraints: {ssd: "true"}   # optional: machine labels that must match
//!     command: ["python3", "-m", "http.server"]   # required to run; optional in simulation
//!     restart: {policy: on-failure, max_attempts: 3, backoff: 1s}   # optional
//!     ttl_after_finished: 24h  # optional: deleted this long after it finished
//!     tenant: team-a           # optional: whose job it is (`default`); with
//!                              # tokens in force, the token's tenant decides
//!     arrival: 90s             # optional, `schedctl simulate` only: when the
//!                              # job arrives (the scheduler ignores it)
//!     departure: 1h            # optional, `schedctl simulate` only: when its
//!                              # tasks finish and free their machines
//!     gpu_model: "V100M16|V100M32"  # optional: GPU models it may run on
//! ```
//!
//! `resources.gpu` is a share of one GPU device (below 1: `0.46`) or a whole
//! number of devices (`2`); see [`crate::gpu`].
//!
//! `restart` and `ttl_after_finished` default to the policy file's
//! `lifecycle` section (see [`crate::lifecycle`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::gpu::{GpuDemand, GPU_MODEL_LABEL};
use crate::labels::{self, Labels};
use crate::lifecycle::{RestartMode, RestartSpec, Span, MAX_ATTEMPTS};
use crate::locality::LocationId;
use crate::names::check_name;
use crate::quantity::{parse_resources, QuantityText};
use crate::resources::{format_bytes, format_cpu, Resources};
use crate::topology::Topology;
use crate::yaml;

/// At most this many tasks in one job. Borg's largest jobs run tens of
/// thousands of tasks; a million is kept as the line past which a count is a
/// typo.
pub const MAX_TASKS_PER_JOB: i64 = 1_000_000;
/// Priorities span 0..=10_000 (Borg's bands: monitoring, production, batch,
/// best effort, all fit with room to spare).
pub const MAX_PRIORITY: i64 = 10_000;

/// A job's index in the order it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct JobId(pub u32);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "j{}", self.0)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    jobs: Vec<JobSpecText>,
}

/// One job as written in the job file, before validation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpecText {
    pub name: String,
    pub tasks: i64,
    pub resources: ResourcesText,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub constraints: Labels,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub restart: Option<RestartText>,
    #[serde(default)]
    pub ttl_after_finished: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// A priority band by name instead of `priority` (see [`crate::band`]).
    #[serde(default)]
    pub band: Option<String>,
    /// For `schedctl simulate`: when the job arrives, as a duration from
    /// the start (`90s`); jobs without one arrive at the start. The
    /// scheduler takes a job when it is submitted and ignores this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival: Option<String>,
    /// For `schedctl simulate`: when the job's tasks finish, as a duration
    /// from the start; without one they run to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departure: Option<String>,
    /// The GPU models the job's tasks may run on, joined by `|`
    /// (`V100M16|V100M32`): a constraint on the machine label
    /// [`GPU_MODEL_LABEL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
}

/// The tenant of a job that names none.
pub const DEFAULT_TENANT: &str = "default";

/// A `restart` mapping as written, before validation.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestartText {
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub max_attempts: Option<i64>,
    #[serde(default)]
    pub backoff: Option<String>,
}

impl RestartText {
    /// Validates it; `field` is the path of the `restart` mapping.
    pub fn validate(&self, field: &str) -> Result<RestartSpec, SpecError> {
        let policy = match &self.policy {
            Some(p) => Some(RestartMode::parse(&format!("{field}.policy"), p)?),
            None => None,
        };
        let max_attempts = match self.max_attempts {
            Some(n) if (1..=i64::from(MAX_ATTEMPTS)).contains(&n) => Some(n as u32),
            Some(n) => {
                return Err(SpecError::new(
                    format!("{field}.max_attempts"),
                    format!("{n} is out of range 1..={MAX_ATTEMPTS}"),
                ))
            }
            None => None,
        };
        let backoff = match &self.backoff {
            Some(b) => Some(Span::parse(&format!("{field}.backoff"), b)?),
            None => None,
        };
        Ok(RestartSpec {
            policy,
            max_attempts,
            backoff,
        })
    }
}

/// A resource request as written, before validation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesText {
    pub cpu: QuantityText,
    pub memory: QuantityText,
    #[serde(default)]
    pub disk: Option<QuantityText>,
    #[serde(default)]
    pub gpu: Option<QuantityText>,
}

/// A validated job: names and quantities checked, not yet tied to a topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSpec {
    pub name: String,
    pub tasks: u32,
    pub request: Resources,
    pub priority: u32,
    pub locality: Option<String>,
    pub constraints: Labels,
    pub command: Vec<String>,
    /// What the job says of restarts; the policy's defaults fill the rest.
    pub restart: RestartSpec,
    /// Its own `ttl_after_finished`, if it sets one.
    pub ttl_after_finished: Option<Span>,
    /// Whose job it is ([`DEFAULT_TENANT`] unless it says).
    pub tenant: String,
    /// The band it named instead of a priority; [`JobSpec::resolve_band`]
    /// turns it into the band's lowest priority.
    pub band: Option<String>,
}

/// A job tied to the topology: its locality resolved to a location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub locality: Option<LocationId>,
}

impl Job {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

impl ResourcesText {
    /// Validates the request; `field` is the path of the `resources` mapping.
    pub fn to_resources(&self, field: &str) -> Result<Resources, SpecError> {
        parse_resources(
            field,
            &self.cpu,
            &self.memory,
            self.disk.as_ref(),
            self.gpu.as_ref(),
        )
    }
}

impl JobSpecText {
    /// Validates one job; `field` is its path, such as `jobs[3]`.
    pub fn validate(&self, field: &str) -> Result<JobSpec, SpecError> {
        check_name(&format!("{field}.name"), &self.name)?;
        if !(1..=MAX_TASKS_PER_JOB).contains(&self.tasks) {
            return Err(SpecError::new(
                format!("{field}.tasks"),
                format!("{} is out of range 1..={MAX_TASKS_PER_JOB}", self.tasks),
            ));
        }
        let request = self.resources.to_resources(&format!("{field}.resources"))?;
        GpuDemand::parse(request.gpu.0)
            .map_err(|e| SpecError::new(format!("{field}.resources.gpu"), e.to_string()))?;
        let mut constraints = self.constraints.clone();
        if let Some(model) = &self.gpu_model {
            let mf = format!("{field}.gpu_model");
            if request.gpu.0 == 0 {
                return Err(SpecError::new(
                    mf,
                    "a GPU model constraint needs a GPU request (resources.gpu)",
                ));
            }
            crate::topology::check_gpu_model(&mf, model, true)?;
            if constraints.contains_key(GPU_MODEL_LABEL) {
                return Err(SpecError::new(
                    mf,
                    format!("give gpu_model or the constraint {GPU_MODEL_LABEL}, not both"),
                ));
            }
            constraints.insert(GPU_MODEL_LABEL.to_string(), model.clone());
        }
        if let Some(b) = &self.band {
            if self.priority.is_some() {
                return Err(SpecError::new(
                    format!("{field}.band"),
                    "give a band or a priority, not both",
                ));
            }
            check_name(&format!("{field}.band"), b)?;
        }
        let priority = self.priority.unwrap_or(0);
        if !(0..=MAX_PRIORITY).contains(&priority) {
            return Err(SpecError::new(
                format!("{field}.priority"),
                format!("{priority} is out of range 0..={MAX_PRIORITY}"),
            ));
        }
        if let Some(l) = &self.locality {
            check_name(&format!("{field}.locality"), l)?;
        }
        for (k, v) in &self.constraints {
            if k.is_empty() || v.is_empty() {
                return Err(SpecError::new(
                    format!("{field}.constraints"),
                    "label keys and values must not be empty",
                ));
            }
        }
        if self.command.first().is_some_and(|c| c.is_empty()) {
            return Err(SpecError::new(
                format!("{field}.command[0]"),
                "the program to run must not be empty",
            ));
        }
        let restart = match &self.restart {
            Some(r) => r.validate(&format!("{field}.restart"))?,
            None => RestartSpec::default(),
        };
        let ttl_after_finished = match &self.ttl_after_finished {
            Some(t) => Some(Span::parse(&format!("{field}.ttl_after_finished"), t)?),
            None => None,
        };
        let tenant = match &self.tenant {
            Some(t) => {
                check_name(&format!("{field}.tenant"), t)?;
                t.clone()
            }
            None => DEFAULT_TENANT.to_string(),
        };
        Ok(JobSpec {
            name: self.name.clone(),
            tasks: self.tasks as u32,
            request,
            priority: priority as u32,
            locality: self.locality.clone(),
            constraints,
            command: self.command.clone(),
            restart,
            ttl_after_finished,
            tenant,
            band: self.band.clone(),
        })
    }
}

/// Parses and validates a job file: every job checked, names unique.
pub fn parse_job_file(text: &str) -> Result<Vec<JobSpec>, SpecError> {
    let file: JobFile = yaml::from_str(text)?;
    if file.jobs.is_empty() {
        return Err(SpecError::new("jobs", "at least one job is required"));
    }
    let mut names = BTreeSet::new();
    file.jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let spec = j.validate(&format!("jobs[{i}]"))?;
            if !names.insert(spec.name.clone()) {
                return Err(SpecError::new(
                    format!("jobs[{i}].name"),
                    format!("duplicate job name {:?}", spec.name),
                ));
            }
            Ok(spec)
        })
        .collect()
}

impl JobSpec {
    /// Sets the priority of a job that named a band to the band's lowest;
    /// an unknown band is an error naming `field.band`.
    pub fn resolve_band(
        &mut self,
        bands: &crate::band::PriorityPolicy,
        field: &str,
    ) -> Result<(), SpecError> {
        if let Some(name) = &self.band {
            let b = bands.named(name).ok_or_else(|| {
                let known: Vec<&str> = bands.bands.iter().map(|b| b.name.as_str()).collect();
                SpecError::new(
                    format!("{field}.band"),
                    format!(
                        "{name:?} is not a band (the policy has {})",
                        known.join(", ")
                    ),
                )
            })?;
            self.priority = b.min;
        }
        Ok(())
    }

    /// Ties the job to a topology: resolves its locality and checks that some
    /// machine anywhere could ever hold one of its tasks. `field` is the job's
    /// path, for errors.
    pub fn resolve(self, id: JobId, topology: &Topology, field: &str) -> Result<Job, SpecError> {
        let locality = match &self.locality {
            Some(name) => Some(topology.locality.id(name).ok_or_else(|| {
                SpecError::new(
                    format!("{field}.locality"),
                    format!(
                        "unknown location {name:?} (known: {})",
                        topology.locality.names().join(", ")
                    ),
                )
            })?),
            None => None,
        };
        let classes = || topology.clusters.iter().flat_map(|c| c.classes.iter());
        let matching: Vec<_> = classes()
            .filter(|k| labels::satisfies(&self.constraints, &k.labels))
            .collect();
        if matching.is_empty() {
            return Err(SpecError::new(
                format!("{field}.constraints"),
                format!(
                    "no machine in any cluster has the labels {}",
                    format_labels(&self.constraints)
                ),
            ));
        }
        if !matching.iter().any(|k| self.request.fits_in(&k.capacity)) {
            let largest = matching
                .iter()
                .fold(Resources::ZERO, |acc, k| acc.max(&k.capacity));
            let kind = self
                .request
                .first_shortfall(&largest)
                .unwrap_or(crate::resources::ResourceKind::Cpu);
            let show = |r: &Resources| match kind {
                crate::resources::ResourceKind::Cpu => format_cpu(r.cpu),
                crate::resources::ResourceKind::Memory => format_bytes(r.memory),
                crate::resources::ResourceKind::Disk => format_bytes(r.disk),
                crate::resources::ResourceKind::Gpu => crate::resources::format_gpu(r.gpu),
            };
            return Err(SpecError::new(
                format!("{field}.resources.{kind}"),
                format!(
                    "{} per task does not fit any machine that matches the job (largest: {}, with {})",
                    show(&self.request),
                    show(&largest),
                    self.request,
                ),
            ));
        }
        Ok(Job {
            id,
            spec: self,
            locality,
        })
    }
}

/// `{a=b, c=d}`, for messages.
pub fn format_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Parses a job file and resolves every job against `topology`.
pub fn load_workload(text: &str, topology: &Topology) -> Result<Vec<Job>, SpecError> {
    load_workload_with_bands(text, topology, &crate::band::PriorityPolicy::default())
}

/// Each job's `arrival` in the job file, in ms (0 when it says none).
pub fn workload_arrivals(text: &str) -> Result<Vec<u64>, SpecError> {
    let file: JobFile = yaml::from_str(text)?;
    file.jobs
        .iter()
        .enumerate()
        .map(|(i, j)| match &j.arrival {
            None => Ok(0),
            Some(a) => Ok(Span::parse(&format!("jobs[{i}].arrival"), a)?.ms()),
        })
        .collect()
}

/// Each job's `departure` in the job file, in ms (`None` when it says
/// none); a departure not after the job's arrival is refused.
pub fn workload_departures(text: &str) -> Result<Vec<Option<u64>>, SpecError> {
    let file: JobFile = yaml::from_str(text)?;
    file.jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let Some(d) = &j.departure else {
                return Ok(None);
            };
            let field = format!("jobs[{i}].departure");
            let d = Span::parse(&field, d)?.ms();
            let a = match &j.arrival {
                Some(a) => Span::parse(&format!("jobs[{i}].arrival"), a)?.ms(),
                None => 0,
            };
            if d <= a {
                return Err(SpecError::new(
                    field,
                    format!("{d} ms is not after the arrival ({a} ms)"),
                ));
            }
            Ok(Some(d))
        })
        .collect()
}

/// [`load_workload`], with `band:` names resolved against `bands` (the
/// policy's).
pub fn load_workload_with_bands(
    text: &str,
    topology: &Topology,
    bands: &crate::band::PriorityPolicy,
) -> Result<Vec<Job>, SpecError> {
    parse_job_file(text)?
        .into_iter()
        .enumerate()
        .map(|(i, mut spec)| {
            let field = format!("jobs[{i}]");
            spec.resolve_band(bands, &field)?;
            spec.resolve(JobId(i as u32), topology, &field)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOBS: &str = r#"
jobs:
  - name: web
    tasks: 20
    resources: {cpu: "1500m", memory: "2Gi"}
    priority: 100
    locality: us-east
    constraints: {ssd: "true"}
    command: ["python3", "-m", "http.server"]
  - name: batch
    tasks: 3
    resources: {cpu: 0.5, memory: 1073741824}
"#;

    const TOPO: &str = r#"
locations: [{name: us-east}]
clusters:
  - name: east-a
    location: us-east
    machines:
      - {class: std, count: 2, cpu: "32", memory: "128Gi", labels: {ssd: "true"}}
"#;

    /// Issue 16: GPU requests are a share of one device or whole devices,
    /// and a GPU model constraint is a label with alternatives.
    #[test]
    fn gpu_requests_and_models_are_checked() {
        let job = |extra: &str| {
            format!(
                "jobs:\n  - name: g\n    tasks: 1\n    resources: {{cpu: 1, memory: 1Gi{extra}}}\n"
            )
        };
        let e = parse_job_file(&job(", gpu: 1.5")).unwrap_err();
        assert_eq!(e.field, "jobs[0].resources.gpu");
        assert!(e.reason.contains("whole number of devices"), "{e}");
        assert!(parse_job_file(&job(", gpu: 0.46")).is_ok());
        assert!(parse_job_file(&job(", gpu: 2")).is_ok());
        let with_model =
            |gpu: &str, model: &str| format!("{}    gpu_model: \"{model}\"\n", job(gpu));
        let e = parse_job_file(&with_model("", "V100M16")).unwrap_err();
        assert_eq!(e.field, "jobs[0].gpu_model");
        let e = parse_job_file(&with_model(", gpu: 1", "V100M16||T4")).unwrap_err();
        assert_eq!(e.field, "jobs[0].gpu_model");
        let j = parse_job_file(&with_model(", gpu: 1", "V100M16|V100M32")).unwrap();
        assert_eq!(j[0].constraints[GPU_MODEL_LABEL], "V100M16|V100M32");
        // A departure before the arrival is refused.
        let e = workload_departures(&format!("{}    arrival: 10s\n    departure: 5s\n", job("")))
            .unwrap_err();
        assert_eq!(e.field, "jobs[0].departure");
        // Against a topology with V100M32 machines only a matching job resolves.
        let topo = Topology::from_yaml(
            "locations: [{name: l}]\nclusters:\n  - name: c\n    location: l\n    machines:\n      - {class: v, count: 1, cpu: 8, memory: 64Gi, gpu: 8, gpu_model: V100M32}\n",
        )
        .unwrap();
        assert!(load_workload(&with_model(", gpu: 1", "V100M16|V100M32"), &topo).is_ok());
        let e = load_workload(&with_model(", gpu: 1", "T4"), &topo).unwrap_err();
        assert_eq!(e.field, "jobs[0].constraints");
    }

    #[test]
    fn parses_the_design_example() {
        let jobs = parse_job_file(JOBS).unwrap();
        assert_eq!(jobs[0].request, Resources::new(1500, 2 << 30));
        assert_eq!(jobs[0].tasks, 20);
        assert_eq!(jobs[0].priority, 100);
        assert_eq!(jobs[1].request, Resources::new(500, 1 << 30));
        let topo = Topology::from_yaml(TOPO).unwrap();
        let w = load_workload(JOBS, &topo).unwrap();
        assert_eq!(w[0].locality, Some(LocationId(0)));
        assert_eq!(w[1].id, JobId(1));
    }

    fn err(text: &str) -> SpecError {
        parse_job_file(text).unwrap_err()
    }

    #[test]
    fn refusals_name_the_field_and_reason() {
        let e = err(&JOBS.replace("tasks: 3", "tasks: -3"));
        assert_eq!(e.field, "jobs[1].tasks");
        let e = err(&JOBS.replace("tasks: 3", "tasks: 0"));
        assert_eq!(e.field, "jobs[1].tasks");
        let e = err(&JOBS.replace("cpu: 0.5", "cpu: -0.5"));
        assert_eq!(e.field, "jobs[1].resources.cpu");
        assert!(e.reason.contains("negative"));
        let e = err(&JOBS.replace("\"2Gi\"", "\"2 gigs\""));
        assert_eq!(e.field, "jobs[0].resources.memory");
        let e = err(&JOBS.replace("name: batch", "name: web"));
        assert_eq!(e.field, "jobs[1].name");
        assert!(e.reason.contains("duplicate"));
        let e = err(&JOBS.replace("name: batch", "name: Batch_1"));
        assert_eq!(e.field, "jobs[1].name");
        let e = err(&JOBS.replace("priority: 100", "priority: 100000"));
        assert_eq!(e.field, "jobs[0].priority");
        let e = err(&JOBS.replace("priority: 100", "prio: 100"));
        assert!(e.to_string().contains("unknown field `prio`"), "{e}");
        let e = err(&JOBS.replace("cpu: 0.5, ", "cpu: 0.5, cpus: 2, "));
        assert!(e.to_string().contains("unknown field `cpus`"), "{e}");
        let e = err(&JOBS.replace("cpu: 0.5", "cpu: 0"));
        assert_eq!(e.field, "jobs[1].resources.cpu");
    }

    #[test]
    fn restart_and_ttl_are_read_and_checked() {
        let jobs = parse_job_file(&JOBS.replace(
            "tasks: 3\n",
            "tasks: 3\n    restart: {policy: never, max_attempts: 5, backoff: 2s}\n    ttl_after_finished: 30s\n",
        ))
        .unwrap();
        assert_eq!(jobs[1].restart.policy, Some(RestartMode::Never));
        assert_eq!(jobs[1].restart.max_attempts, Some(5));
        assert_eq!(jobs[1].restart.backoff, Some(Span::secs(2)));
        assert_eq!(jobs[1].ttl_after_finished, Some(Span::secs(30)));
        assert!(jobs[0].restart.is_empty());
        for (text, field) in [
            ("restart: {policy: always}", "jobs[1].restart.policy"),
            ("restart: {max_attempts: 0}", "jobs[1].restart.max_attempts"),
            ("restart: {backoff: soon}", "jobs[1].restart.backoff"),
            ("ttl_after_finished: 10", "jobs[1].ttl_after_finished"),
        ] {
            let e = err(&JOBS.replace("tasks: 3\n", &format!("tasks: 3\n    {text}\n")));
            assert_eq!(e.field, field, "{text}: {e}");
        }
        let e = err(&JOBS.replace("tasks: 3\n", "tasks: 3\n    restart: {tries: 2}\n"));
        assert!(e.to_string().contains("unknown field `tries`"), "{e}");
    }

    #[test]
    fn resolution_against_the_topology_says_why() {
        let topo = Topology::from_yaml(TOPO).unwrap();
        let e =
            load_workload(&JOBS.replace("locality: us-east", "locality: mars"), &topo).unwrap_err();
        assert_eq!(e.field, "jobs[0].locality");
        assert!(e.reason.contains("unknown location \"mars\""), "{e}");

        let e = load_workload(&JOBS.replace("\"1500m\"", "\"33\""), &topo).unwrap_err();
        assert_eq!(e.field, "jobs[0].resources.cpu");
        assert!(e.reason.contains("does not fit any machine"), "{e}");

        let e = load_workload(&JOBS.replace("ssd: \"true\"", "gpu: a100"), &topo).unwrap_err();
        assert_eq!(e.field, "jobs[0].constraints");
        assert!(e.reason.contains("gpu=a100"), "{e}");
    }

    #[test]
    fn a_band_names_its_lowest_priority() {
        let bands = crate::band::PriorityPolicy::default();
        let topo = crate::topology::Topology::from_yaml(
            "locations: [{name: a}]\nclusters:\n  - {name: c, location: a, machines: [{class: m, count: 1, cpu: 4, memory: 8Gi}]}\n",
        )
        .unwrap();
        let job = |extra: &str| {
            format!(
                "jobs:\n  - {{name: j, tasks: 1, resources: {{cpu: 1, memory: 1Gi}}, {extra}}}\n"
            )
        };
        let jobs = load_workload_with_bands(&job("band: production"), &topo, &bands).unwrap();
        assert_eq!(jobs[0].spec.priority, 6000);
        let e = load_workload_with_bands(&job("band: gold"), &topo, &bands).unwrap_err();
        assert_eq!(e.field, "jobs[0].band");
        assert!(e.reason.contains("production"), "{e:?}");
        let e =
            load_workload_with_bands(&job("band: batch, priority: 5"), &topo, &bands).unwrap_err();
        assert_eq!(e.field, "jobs[0].band");
    }
}
