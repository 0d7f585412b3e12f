//! Quotas per tenant and priority band, checked at admission (Borg,
//! EuroSys 2015, section 2.5: "quota is used to decide which jobs to
//! admit"; Kubernetes' ResourceQuota does the same per namespace).
//!
//! ```yaml
//! quotas:
//!   - {tenant: team-a, band: production, cpu: "64", memory: "256Gi", gpu: 8, tasks: 1000}
//! ```
//!
//! A limit left out is unlimited; a tenant and band with no entry have no
//! quota in that band, which a deployment closes by listing `cpu: 0`. The
//! lowest band is admitted without quota (its tasks are always
//! preemptible). Usage is what the tenant's unfinished tasks in the band
//! request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::band::PriorityPolicy;
use crate::error::SpecError;
use crate::names::check_name;
use crate::quantity::{parse_bytes, parse_cpu, parse_gpu, QuantityText};
use crate::resources::{
    format_bytes, format_cpu, format_gpu, Bytes, MilliCpu, MilliGpu, Resources,
};
use crate::yaml;

/// One entry as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaText {
    pub tenant: String,
    pub band: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<QuantityText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<QuantityText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<QuantityText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    quotas: Vec<QuotaText>,
}

/// The limits of one tenant in one band; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub cpu: Option<MilliCpu>,
    pub memory: Option<Bytes>,
    pub gpu: Option<MilliGpu>,
    pub tasks: Option<u64>,
}

/// What a tenant's unfinished tasks in a band request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub resources: Resources,
    pub tasks: u64,
}

impl Usage {
    pub fn add(&mut self, request: &Resources, tasks: u64) {
        self.resources = self.resources.saturating_add(&request.times(tasks));
        self.tasks = self.tasks.saturating_add(tasks);
    }
}

/// An admission that would pass a quota; its message names the tenant,
/// band, resource, limit and usage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tenant {tenant} is over its {band} quota of {resource}: limit {limit}, in use {usage}, this submission asks {asked}"
)]
pub struct Exceeded {
    pub tenant: String,
    pub band: String,
    /// `cpu`, `memory`, `gpu` or `tasks`.
    pub resource: &'static str,
    pub limit: String,
    pub usage: String,
    pub asked: String,
}

impl Limit {
    /// Whether `usage` plus `asked` stays within the limit; the first
    /// resource over it otherwise.
    pub fn check(
        &self,
        tenant: &str,
        band: &str,
        usage: &Usage,
        asked: &Usage,
    ) -> Result<(), Box<Exceeded>> {
        let over = |resource: &'static str,
                    limit: u64,
                    used: u64,
                    more: u64,
                    fmt: &dyn Fn(u64) -> String| {
            (used.saturating_add(more) > limit).then(|| Exceeded {
                tenant: tenant.to_string(),
                band: band.to_string(),
                resource,
                limit: fmt(limit),
                usage: fmt(used),
                asked: fmt(more),
            })
        };
        let (u, a) = (&usage.resources, &asked.resources);
        let found = self
            .cpu
            .and_then(|l| over("cpu", l.0, u.cpu.0, a.cpu.0, &|v| format_cpu(MilliCpu(v))))
            .or_else(|| {
                self.memory.and_then(|l| {
                    over("memory", l.0, u.memory.0, a.memory.0, &|v| {
                        format_bytes(Bytes(v))
                    })
                })
            })
            .or_else(|| {
                self.gpu
                    .and_then(|l| over("gpu", l.0, u.gpu.0, a.gpu.0, &|v| format_gpu(MilliGpu(v))))
            })
            .or_else(|| {
                self.tasks
                    .and_then(|l| over("tasks", l, usage.tasks, asked.tasks, &|v| v.to_string()))
            });
        match found {
            Some(e) => Err(Box::new(e)),
            None => Ok(()),
        }
    }
}

/// Every quota, by tenant and band.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    limits: BTreeMap<(String, String), Limit>,
}

impl Quotas {
    /// Parses a quota file; bands must be the policy's.
    pub fn from_yaml(text: &str, bands: &PriorityPolicy) -> Result<Quotas, SpecError> {
        let file: QuotaFile = yaml::from_str(text)?;
        let mut q = Quotas::default();
        for (i, t) in file.quotas.iter().enumerate() {
            let field = format!("quotas[{i}]");
            let (key, limit) = t.validate(&field, bands)?;
            if q.limits.insert(key.clone(), limit).is_some() {
                return Err(SpecError::new(
                    format!("{field}.band"),
                    format!("tenant {} has a second {} entry", key.0, key.1),
                ));
            }
        }
        Ok(q)
    }

    /// The limit of `tenant` in `band`, if any.
    pub fn get(&self, tenant: &str, band: &str) -> Option<&Limit> {
        self.limits.get(&(tenant.to_string(), band.to_string()))
    }

    /// Sets (or, with `None`, removes) a limit.
    pub fn set(&mut self, tenant: &str, band: &str, limit: Option<Limit>) {
        let key = (tenant.to_string(), band.to_string());
        match limit {
            Some(l) => {
                self.limits.insert(key, l);
            }
            None => {
                self.limits.remove(&key);
            }
        }
    }

    /// Every (tenant, band, limit), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Limit)> {
        self.limits
            .iter()
            .map(|((t, b), l)| (t.as_str(), b.as_str(), l))
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}

/// Admission of a workload submitted in order with nothing finishing (the
/// simulator's view): for each job, whether its tenant stays within its
/// quota in its band counting every job admitted before it, by the same
/// check the scheduler makes. The lowest band is admitted without quota.
pub fn admit_in_order(
    jobs: &[crate::job::Job],
    quotas: &Quotas,
    bands: &PriorityPolicy,
) -> Vec<Result<(), Box<Exceeded>>> {
    let mut used: BTreeMap<(String, String), Usage> = BTreeMap::new();
    jobs.iter()
        .map(|j| {
            let s = &j.spec;
            if bands.is_lowest(s.priority) {
                return Ok(());
            }
            let band = bands.band_name(s.priority).to_string();
            let key = (s.tenant.clone(), band);
            let mut asked = Usage::default();
            asked.add(&s.request, u64::from(s.tasks));
            if let Some(limit) = quotas.get(&key.0, &key.1) {
                let usage = used.get(&key).copied().unwrap_or_default();
                limit.check(&key.0, &key.1, &usage, &asked)?;
            }
            used.entry(key)
                .or_default()
                .add(&s.request, u64::from(s.tasks));
            Ok(())
        })
        .collect()
}

impl QuotaText {
    /// The entry's key and limit; errors name `field.KEY`.
    pub fn validate(
        &self,
        field: &str,
        bands: &PriorityPolicy,
    ) -> Result<((String, String), Limit), SpecError> {
        check_name(&format!("{field}.tenant"), &self.tenant)?;
        if bands.named(&self.band).is_none() {
            let known: Vec<&str> = bands.bands.iter().map(|b| b.name.as_str()).collect();
            return Err(SpecError::new(
                format!("{field}.band"),
                format!(
                    "{:?} is not a band (the policy has {})",
                    self.band,
                    known.join(", ")
                ),
            ));
        }
        let q =
            |key: &str, v: &Option<QuantityText>, parse: &dyn Fn(&str) -> Result<u64, String>| {
                v.as_ref()
                    .map(|t| {
                        parse(&t.as_text()).map_err(|e| SpecError::new(format!("{field}.{key}"), e))
                    })
                    .transpose()
            };
        let limit = Limit {
            cpu: q("cpu", &self.cpu, &|s| {
                parse_cpu(s).map(|c| c.0).map_err(|e| e.to_string())
            })?
            .map(MilliCpu),
            memory: q("memory", &self.memory, &|s| {
                parse_bytes(s).map(|b| b.0).map_err(|e| e.to_string())
            })?
            .map(Bytes),
            gpu: q("gpu", &self.gpu, &|s| {
                parse_gpu(s).map(|g| g.0).map_err(|e| e.to_string())
            })?
            .map(MilliGpu),
            tasks: match self.tasks {
                Some(n) if n < 0 => {
                    return Err(SpecError::new(
                        format!("{field}.tasks"),
                        format!("{n} is negative"),
                    ))
                }
                n => n.map(|n| n as u64),
            },
        };
        Ok(((self.tenant.clone(), self.band.clone()), limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(text: &str) -> Result<Quotas, SpecError> {
        Quotas::from_yaml(text, &PriorityPolicy::default())
    }

    #[test]
    fn a_file_names_limits_by_tenant_and_band() {
        let q = quotas(
            "quotas:\n  - {tenant: team-a, band: production, cpu: \"64\", memory: 256Gi, tasks: 10}\n",
        )
        .unwrap();
        let l = q.get("team-a", "production").unwrap();
        assert_eq!(l.cpu, Some(MilliCpu(64_000)));
        assert_eq!(l.memory, Some(Bytes(256 << 30)));
        assert_eq!(l.gpu, None);
        assert_eq!(l.tasks, Some(10));
        assert!(q.get("team-a", "batch").is_none());
    }

    #[test]
    fn bad_entries_name_their_field() {
        let e = quotas("quotas:\n  - {tenant: a, band: gold, cpu: 1}\n").unwrap_err();
        assert_eq!(e.field, "quotas[0].band");
        let e = quotas("quotas:\n  - {tenant: a, band: batch, cpu: -1}\n").unwrap_err();
        assert_eq!(e.field, "quotas[0].cpu");
        let e = quotas("quotas:\n  - {tenant: a, band: batch, tasks: -1}\n").unwrap_err();
        assert_eq!(e.field, "quotas[0].tasks");
        let e = quotas("quotas:\n  - {tenant: a, band: batch}\n  - {tenant: a, band: batch}\n")
            .unwrap_err();
        assert_eq!(e.field, "quotas[1].band");
        let e = quotas("quotas:\n  - {tenant: a, band: batch, disk: 1}\n").unwrap_err();
        assert!(e.reason.contains("disk"), "{e:?}");
    }

    #[test]
    fn the_first_resource_over_its_limit_is_named() {
        let limit = Limit {
            cpu: Some(MilliCpu(4000)),
            memory: Some(Bytes(8 << 30)),
            gpu: None,
            tasks: Some(5),
        };
        let mut used = Usage::default();
        used.add(&Resources::new(1000, 1 << 30), 3);
        // 3 tasks of 1 cpu in use; 1 more fits (4 cpu, 4 tasks).
        let mut one = Usage::default();
        one.add(&Resources::new(1000, 1 << 30), 1);
        assert!(limit.check("t", "production", &used, &one).is_ok());
        // 2 more: 5 cpu > 4: cpu is named, with the figures.
        let mut two = Usage::default();
        two.add(&Resources::new(1000, 1 << 30), 2);
        let e = limit.check("t", "production", &used, &two).unwrap_err();
        assert_eq!(
            (
                e.resource,
                e.limit.as_str(),
                e.usage.as_str(),
                e.asked.as_str()
            ),
            ("cpu", "4", "3", "2")
        );
        assert!(e
            .to_string()
            .contains("tenant t is over its production quota of cpu"));
    }
}
