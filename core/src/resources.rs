//! Resource amounts in integer units.
//!
//! Every quantity the core compares or stores is an integer: cpu and gpu in
//! thousandths of a unit, memory and disk in bytes. Floats would make the
//! order of placements depend on rounding, and placements must be
//! reproducible bit for bit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Thousandths of a cpu core (`"500m"` is `MilliCpu(500)`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct MilliCpu(pub u64);

/// A number of bytes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Bytes(pub u64);

/// Thousandths of a GPU, so that shared (fractional) GPUs pack like cpu.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct MilliGpu(pub u64);

/// The kinds of resource the scheduler accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Cpu,
    Memory,
    Disk,
    Gpu,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::Cpu,
        ResourceKind::Memory,
        ResourceKind::Disk,
        ResourceKind::Gpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Cpu => "cpu",
            ResourceKind::Memory => "memory",
            ResourceKind::Disk => "disk",
            ResourceKind::Gpu => "gpu",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A vector of resource amounts: a machine's capacity, a task's request, or
/// what is allocated or free on a machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: MilliCpu,
    pub memory: Bytes,
    #[serde(default)]
    pub disk: Bytes,
    #[serde(default)]
    pub gpu: MilliGpu,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu: MilliCpu(0),
        memory: Bytes(0),
        disk: Bytes(0),
        gpu: MilliGpu(0),
    };

    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Resources {
            cpu: MilliCpu(cpu_millis),
            memory: Bytes(memory_bytes),
            ..Resources::ZERO
        }
    }

    pub fn with_disk(mut self, bytes: u64) -> Self {
        self.disk = Bytes(bytes);
        self
    }

    pub fn with_gpu(mut self, millis: u64) -> Self {
        self.gpu = MilliGpu(millis);
        self
    }

    /// The amounts as an array in `ResourceKind::ALL` order.
    #[inline]
    pub fn as_array(&self) -> [u64; 4] {
        [self.cpu.0, self.memory.0, self.disk.0, self.gpu.0]
    }

    #[inline]
    pub fn from_array(a: [u64; 4]) -> Self {
        Resources {
            cpu: MilliCpu(a[0]),
            memory: Bytes(a[1]),
            disk: Bytes(a[2]),
            gpu: MilliGpu(a[3]),
        }
    }

    #[inline]
    pub fn get(&self, kind: ResourceKind) -> u64 {
        match kind {
            ResourceKind::Cpu => self.cpu.0,
            ResourceKind::Memory => self.memory.0,
            ResourceKind::Disk => self.disk.0,
            ResourceKind::Gpu => self.gpu.0,
        }
    }

    /// True when every amount of `self` is at most the same amount of `other`.
    #[inline]
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu <= other.cpu
            && self.memory <= other.memory
            && self.disk <= other.disk
            && self.gpu <= other.gpu
    }

    /// The first resource in which `self` exceeds `other`, if any.
    pub fn first_shortfall(&self, other: &Resources) -> Option<ResourceKind> {
        ResourceKind::ALL
            .into_iter()
            .find(|&k| self.get(k) > other.get(k))
    }

    pub fn is_zero(&self) -> bool {
        *self == Resources::ZERO
    }

    #[inline]
    pub fn saturating_add(&self, o: &Resources) -> Resources {
        let (a, b) = (self.as_array(), o.as_array());
        Resources::from_array(std::array::from_fn(|i| a[i].saturating_add(b[i])))
    }

    #[inline]
    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        let (a, b) = (self.as_array(), o.as_array());
        Resources::from_array(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
    }

    /// `self` multiplied by `n`, saturating.
    pub fn times(&self, n: u64) -> Resources {
        Resources::from_array(self.as_array().map(|v| v.saturating_mul(n)))
    }

    /// The element-wise maximum.
    pub fn max(&self, o: &Resources) -> Resources {
        let (a, b) = (self.as_array(), o.as_array());
        Resources::from_array(std::array::from_fn(|i| a[i].max(b[i])))
    }

    /// The largest share of `capacity` that `self` takes in any one resource,
    /// in parts per million (the "dominant share" of DRF, Ghodsi et al.,
    /// NSDI 2011). Resources the capacity lacks are ignored.
    pub fn dominant_share_ppm(&self, capacity: &Resources) -> u64 {
        let (a, c) = (self.as_array(), capacity.as_array());
        (0..4)
            .filter(|&i| c[i] > 0)
            .map(|i| share_ppm(a[i], c[i]))
            .max()
            .unwrap_or(0)
    }
}

/// `part / whole` in parts per million, capped at one million. `whole` must
/// not be zero.
#[inline]
pub fn share_ppm(part: u64, whole: u64) -> u64 {
    debug_assert!(whole > 0);
    let part = part.min(whole);
    // In u64 when the product fits: the same quotient, cheaper.
    match part.checked_mul(1_000_000) {
        Some(p) => p / whole,
        None => ((u128::from(part) * 1_000_000) / u128::from(whole)) as u64,
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} memory={}",
            format_cpu(self.cpu),
            format_bytes(self.memory)
        )?;
        if self.disk.0 > 0 {
            write!(f, " disk={}", format_bytes(self.disk))?;
        }
        if self.gpu.0 > 0 {
            write!(f, " gpu={}", format_gpu(self.gpu))?;
        }
        Ok(())
    }
}

/// Formats cpu as Kubernetes would: whole cores as `2`, else `1500m`.
pub fn format_cpu(c: MilliCpu) -> String {
    if c.0.is_multiple_of(1000) {
        format!("{}", c.0 / 1000)
    } else {
        format!("{}m", c.0)
    }
}

/// Formats a GPU amount like cpu.
pub fn format_gpu(g: MilliGpu) -> String {
    format_cpu(MilliCpu(g.0))
}

/// Formats bytes with the largest binary suffix that divides them exactly.
pub fn format_bytes(b: Bytes) -> String {
    const SUFFIXES: [(&str, u64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (s, m) in SUFFIXES {
        if b.0 >= m && b.0.is_multiple_of(m) {
            return format!("{}{}", b.0 / m, s);
        }
    }
    format!("{}", b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_in_checks_every_resource() {
        let cap = Resources::new(4000, 100).with_gpu(1000);
        assert!(Resources::new(4000, 100).fits_in(&cap));
        assert!(!Resources::new(4001, 1).fits_in(&cap));
        assert!(!Resources::new(1, 1).with_gpu(1001).fits_in(&cap));
        assert_eq!(
            Resources::new(1, 101).first_shortfall(&cap),
            Some(ResourceKind::Memory)
        );
    }

    #[test]
    fn dominant_share_takes_the_largest_ratio() {
        // cpu 1000/4000 = 250000 ppm, memory 75/100 = 750000 ppm.
        let cap = Resources::new(4000, 100);
        assert_eq!(Resources::new(1000, 75).dominant_share_ppm(&cap), 750_000);
        // A resource the machine lacks is ignored, not divided by zero.
        assert_eq!(Resources::new(0, 0).with_gpu(5).dominant_share_ppm(&cap), 0);
    }

    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(format_cpu(MilliCpu(1500)), "1500m");
        assert_eq!(format_cpu(MilliCpu(2000)), "2");
        assert_eq!(format_bytes(Bytes(4 << 30)), "4Gi");
        assert_eq!(format_bytes(Bytes(1_500_000_000)), "1500000000");
    }
}
