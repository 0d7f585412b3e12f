//! What happens to tasks and jobs over time: restart policies with
//! exponential backoff, automatic deletion of finished jobs, and the
//! timeouts that keep the state bounded. The job spec names what a job
//! wants (`restart`, `ttl_after_finished`); the policy file's `lifecycle`
//! section gives the defaults and the cluster-wide timeouts.
//!
//! Durations are written as Kubernetes and Nomad users write them: an
//! integer and a unit, `ms`, `s`, `m`, `h` or `d`, possibly several
//! (`1h30m`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// The most attempts a restart policy may allow. Beyond this a crash loop
/// is a bug to fix, not to retry.
pub const MAX_ATTEMPTS: u32 = 1_000;

/// Durations are at most 365 days: anything longer is a typo.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 3_600_000;

/// A span of time in milliseconds, read from and written as text (`90s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub u64);

impl Span {
    pub const fn secs(s: u64) -> Span {
        Span(s * 1000)
    }

    pub fn ms(self) -> u64 {
        self.0
    }

    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// Parses `field`'s text: one or more `<integer><unit>` parts.
    pub fn parse(field: &str, text: &str) -> Result<Span, SpecError> {
        let bad = |why: &str| {
            SpecError::new(
                field,
                format!("{text:?} is not a duration ({why}; write it as 500ms, 30s, 5m, 24h, 7d or 1h30m)"),
            )
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad("a number must come before each unit"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| bad("the number is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(bad("a unit is missing")),
                _ => return Err(bad("unknown unit")),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| bad("too long"))?;
        }
        if total > MAX_DURATION_MS {
            return Err(bad("longer than 365 days"));
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    /// The shortest exact form: `1h30m`, `90s` stays `1m30s`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse("duration", &text).map_err(|e| serde::de::Error::custom(e.reason))
    }
}

/// When a failed task starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartMode {
    /// A task that exits non-zero stays failed (a lost one still starts
    /// again, within its attempts: losing a machine is not the task's fault).
    #[serde(rename = "never")]
    Never,
    /// A task that exits non-zero starts again, within its attempts.
    #[serde(rename = "on-failure")]
    OnFailure,
}

impl RestartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartMode::Never => "never",
            RestartMode::OnFailure => "on-failure",
        }
    }

    pub fn parse(field: &str, text: &str) -> Result<RestartMode, SpecError> {
        match text {
            "never" => Ok(RestartMode::Never),
            "on-failure" => Ok(RestartMode::OnFailure),
            other => Err(SpecError::new(
                field,
                format!("{other:?} is not a restart policy (never, on-failure)"),
            )),
        }
    }
}

/// A job's `restart` as written: each part optional, the policy file's
/// defaults fill the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestartMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Span>,
}

impl RestartSpec {
    pub fn is_empty(&self) -> bool {
        *self == RestartSpec::default()
    }

    /// Checks the values; `field` is the path of the `restart` mapping.
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        if let Some(n) = self.max_attempts {
            if !(1..=MAX_ATTEMPTS).contains(&n) {
                return Err(SpecError::new(
                    format!("{field}.max_attempts"),
                    format!("{n} is out of range 1..={MAX_ATTEMPTS}"),
                ));
            }
        }
        Ok(())
    }
}

/// The restart rules in force for one job: its spec over the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub mode: RestartMode,
    pub max_attempts: u32,
    pub backoff: Span,
    pub max_backoff: Span,
}

/// What becomes of a task whose attempt ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Start it again once `after` has passed.
    After(Span),
    /// No more attempts: it ends failed, for this reason.
    GiveUp(&'static str),
}

impl Restart {
    /// The wait before the attempt after `attempts` attempts: `backoff`,
    /// doubled for each attempt past the first, capped at `max_backoff`
    /// (Kubernetes' CrashLoopBackOff doubles from 10 s up to 5 min; Nomad's
    /// reschedule `delay_function = "exponential"` likewise).
    pub fn delay(&self, attempts: u32) -> Span {
        let doublings = attempts.saturating_sub(1).min(40);
        let d = self.backoff.0.saturating_mul(1u64 << doublings);
        Span(d.min(self.max_backoff.0.max(self.backoff.0)))
    }

    /// After `attempts` attempts the last one failed (exit non-zero) or,
    /// with `lost`, went with its machine: retry, or give up and why.
    pub fn after(&self, attempts: u32, lost: bool) -> Retry {
        if !lost && self.mode == RestartMode::Never {
            return Retry::GiveUp("the restart policy is never");
        }
        if attempts >= self.max_attempts {
            return Retry::GiveUp("its attempts are used up (restart.max_attempts)");
        }
        Retry::After(self.delay(attempts))
    }
}

/// The policy file's `lifecycle` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecyclePolicy {
    /// Restart rules for jobs that do not set theirs.
    #[serde(default)]
    pub restart: RestartDefaults,
    /// A finished job (every task succeeded, failed or cancelled) is
    /// deleted this long after it finished, unless it sets its own.
    #[serde(default = "default_ttl_after_finished")]
    pub ttl_after_finished: Span,
    /// Node agents keep a deleted job's task directories, and a task's
    /// older attempts' directories, this long.
    #[serde(default = "default_task_dir_retention")]
    pub task_dir_retention: Span,
    /// Tasks handed to a cluster that has been down this long are taken
    /// back and ranked again elsewhere.
    #[serde(default = "default_cluster_down_timeout")]
    pub cluster_down_timeout: Span,
    /// A machine shape no cluster has reported for this long is forgotten:
    /// jobs are no longer admitted for it alone.
    #[serde(default = "default_machine_class_ttl")]
    pub machine_class_ttl: Span,
    /// How often the leader compacts etcd's history (Kubernetes' API server
    /// compacts every 5 minutes).
    #[serde(default = "default_compaction_interval")]
    pub compaction_interval: Span,
}

/// The restart defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartDefaults {
    #[serde(default = "default_restart_mode")]
    pub policy: RestartMode,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff")]
    pub backoff: Span,
    /// The longest wait between attempts, however many came before.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Span,
}

fn default_restart_mode() -> RestartMode {
    RestartMode::OnFailure
}
fn default_max_attempts() -> u32 {
    3
}
fn default_backoff() -> Span {
    Span::secs(1)
}
fn default_max_backoff() -> Span {
    Span::secs(300)
}
fn default_ttl_after_finished() -> Span {
    Span::secs(24 * 3600)
}
fn default_task_dir_retention() -> Span {
    Span::secs(3600)
}
fn default_cluster_down_timeout() -> Span {
    Span::secs(60)
}
fn default_machine_class_ttl() -> Span {
    Span::secs(3600)
}
fn default_compaction_interval() -> Span {
    Span::secs(300)
}

impl Default for RestartDefaults {
    fn default() -> Self {
        RestartDefaults {
            policy: default_restart_mode(),
            max_attempts: default_max_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        LifecyclePolicy {
            restart: RestartDefaults::default(),
            ttl_after_finished: default_ttl_after_finished(),
            task_dir_retention: default_task_dir_retention(),
            cluster_down_timeout: default_cluster_down_timeout(),
            machine_class_ttl: default_machine_class_ttl(),
            compaction_interval: default_compaction_interval(),
        }
    }
}

impl LifecyclePolicy {
    /// The rules for a job whose spec says `spec`.
    pub fn restart(&self, spec: &RestartSpec) -> Restart {
        let d = &self.restart;
        Restart {
            mode: spec.policy.unwrap_or(d.policy),
            max_attempts: spec.max_attempts.unwrap_or(d.max_attempts),
            backoff: spec.backoff.unwrap_or(d.backoff),
            max_backoff: d.max_backoff,
        }
    }

    /// How long after it finished a job with `ttl` (its own, if any) is
    /// deleted.
    pub fn ttl(&self, ttl: Option<Span>) -> Span {
        ttl.unwrap_or(self.ttl_after_finished)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        RestartSpec {
            policy: None,
            max_attempts: Some(self.restart.max_attempts),
            backoff: None,
        }
        .validate("lifecycle.restart")?;
        if self.restart.max_backoff < self.restart.backoff {
            return Err(SpecError::new(
                "lifecycle.restart.max_backoff",
                format!(
                    "{} is shorter than the backoff {}",
                    self.restart.max_backoff, self.restart.backoff
                ),
            ));
        }
        for (field, span, least) in [
            ("cluster_down_timeout", self.cluster_down_timeout, 1000),
            ("compaction_interval", self.compaction_interval, 1000),
            ("machine_class_ttl", self.machine_class_ttl, 1000),
        ] {
            if span.0 < least {
                return Err(SpecError::new(
                    format!("lifecycle.{field}"),
                    format!("{span} is shorter than 1s"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("7d", 7 * 86_400_000),
            ("1h30m", 5_400_000),
            ("0s", 0),
        ] {
            assert_eq!(Span::parse("f", text).unwrap(), Span(ms), "{text}");
        }
        assert_eq!(Span(5_400_000).to_string(), "1h30m");
        assert_eq!(Span(90_500).to_string(), "1m30s500ms");
        assert_eq!(Span(0).to_string(), "0s");
        for bad in [
            "",
            "10",
            "s",
            "5 min",
            "1x",
            "-1s",
            "400d",
            "99999999999999999999s",
        ] {
            let e = Span::parse("jobs[0].ttl_after_finished", bad).unwrap_err();
            assert_eq!(e.field, "jobs[0].ttl_after_finished");
            assert!(e.reason.contains("not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        // backoff 1s, cap 5m: 1, 2, 4, ..., 256, then 300 for ever.
        let r = LifecyclePolicy::default().restart(&RestartSpec {
            max_attempts: Some(100),
            ..Default::default()
        });
        let waits: Vec<u64> = (1..=11).map(|n| r.delay(n).0 / 1000).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(r.delay(u32::MAX), Span::secs(300));
    }

    #[test]
    fn attempts_and_mode_decide_the_retry() {
        let p = LifecyclePolicy::default();
        // Default: on-failure, 3 attempts.
        let r = p.restart(&RestartSpec::default());
        assert_eq!(r.after(1, false), Retry::After(Span::secs(1)));
        assert_eq!(r.after(2, false), Retry::After(Span::secs(2)));
        assert!(matches!(r.after(3, false), Retry::GiveUp(_)));
        // never: a failure is final, a loss is retried within the attempts.
        let r = p.restart(&RestartSpec {
            policy: Some(RestartMode::Never),
            ..Default::default()
        });
        assert!(matches!(r.after(1, false), Retry::GiveUp(w) if w.contains("never")));
        assert_eq!(r.after(1, true), Retry::After(Span::secs(1)));
        assert!(matches!(r.after(3, true), Retry::GiveUp(w) if w.contains("attempts")));
    }

    #[test]
    fn policy_values_are_checked() {
        let mut p = LifecyclePolicy::default();
        p.restart.max_backoff = Span(10);
        assert_eq!(
            p.validate().unwrap_err().field,
            "lifecycle.restart.max_backoff"
        );
        let mut p = LifecyclePolicy::default();
        p.restart.max_attempts = 0;
        assert_eq!(
            p.validate().unwrap_err().field,
            "lifecycle.restart.max_attempts"
        );
        let p = LifecyclePolicy {
            cluster_down_timeout: Span(0),
            ..Default::default()
        };
        assert_eq!(
            p.validate().unwrap_err().field,
            "lifecycle.cluster_down_timeout"
        );
    }
}
