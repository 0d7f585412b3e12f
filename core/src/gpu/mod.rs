//! GPUs as devices: what a task asks of them, and which devices it gets.
//!
//! A machine with `gpu: 8` has eight devices of 1000 milli-GPUs each. A task
//! asks either for a *share* of one device (`gpu: 0.46`, 460 milli, below
//! one whole device), which GPU-sharing runtimes can honour only on a single
//! device, or for a whole number of whole devices (`gpu: 2`), as the
//! Alibaba trace's `num_gpu`/`gpu_milli` do. Any other amount (`1.5`) is
//! refused where the job is read.
//!
//! The amount stays in [`Resources::gpu`](crate::resources::Resources) (so
//! cluster summaries, quotas and the API keep counting milli-GPUs); the
//! [`Cell`](crate::cell::Cell) keeps, per machine, what is free on each
//! device, and a placement names its devices as [`GpuSlot`]s.
//!
//! A GPU model constraint is the label [`GPU_MODEL_LABEL`]: machines carry
//! their model there (`gpu_model: V100M32` in the topology) and a job asks
//! for any of several (`gpu_model: "V100M16|V100M32"`, the trace's
//! `gpu_spec`), which [`crate::labels`] reads as alternatives.
//!
//! - [`frag`]: the fragmentation of a machine's GPUs measured against a task
//!   mix (Weng et al., USENIX ATC 2023).
//! - [`strategy`]: choosing a machine and its devices for one task, by best
//!   fit or by fragmentation.

pub mod frag;
pub mod strategy;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Thousandths of a GPU in one whole device.
pub const DEVICE_MILLI: u32 = 1000;

/// The most GPU devices one machine may have (a bound against typos such
/// as `--gpus 800`; the largest servers hold 16).
pub const MAX_DEVICES: u32 = 64;

/// The machine label that holds the GPU model (`V100M32`, `T4`).
pub const GPU_MODEL_LABEL: &str = "gpu-model";

/// What a task asks of a machine's GPU devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum GpuDemand {
    None,
    /// A share of one device, in milli-GPUs, 1..=999.
    Share(u32),
    /// Whole, free devices.
    Whole(u32),
}

/// Why a GPU amount cannot be a task's request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{milli} milli-GPUs: ask for a share of one device (below 1) or a whole number of devices")]
pub struct NotADemand {
    pub milli: u64,
}

impl GpuDemand {
    /// The demand behind a request of `milli` milli-GPUs.
    pub fn parse(milli: u64) -> Result<GpuDemand, NotADemand> {
        match milli {
            0 => Ok(GpuDemand::None),
            m if m < u64::from(DEVICE_MILLI) => Ok(GpuDemand::Share(m as u32)),
            m if m.is_multiple_of(u64::from(DEVICE_MILLI)) && m / 1000 <= u64::from(u32::MAX) => {
                Ok(GpuDemand::Whole((m / 1000) as u32))
            }
            milli => Err(NotADemand { milli }),
        }
    }

    /// The demand of a request already validated; an amount that is
    /// neither a share nor whole devices (only possible from a caller that
    /// skipped validation) is taken as the whole devices that cover it.
    pub fn of(milli: u64) -> GpuDemand {
        GpuDemand::parse(milli).unwrap_or(GpuDemand::Whole(
            milli.div_ceil(u64::from(DEVICE_MILLI)) as u32
        ))
    }

    /// The milli-GPUs it takes in all.
    pub fn milli(self) -> u64 {
        match self {
            GpuDemand::None => 0,
            GpuDemand::Share(m) => u64::from(m),
            GpuDemand::Whole(n) => u64::from(n) * u64::from(DEVICE_MILLI),
        }
    }

    /// What it takes of each device it uses: the share, or a whole device.
    pub fn per_device(self) -> u32 {
        match self {
            GpuDemand::None => 0,
            GpuDemand::Share(m) => m,
            GpuDemand::Whole(_) => DEVICE_MILLI,
        }
    }
}

/// One device a task uses, and how much of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GpuSlot {
    pub device: u32,
    pub milli: u32,
}

/// The devices of one task's placement, as the placements CSV shows them:
/// whole devices joined by `+` (`0+1`), a share as `DEVICE:MILLI`
/// (`3:460`), nothing for none.
pub struct SlotsDisplay<'a>(pub &'a [GpuSlot]);

impl fmt::Display for SlotsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            if s.milli == DEVICE_MILLI {
                write!(f, "{}", s.device)?;
            } else {
                write!(f, "{}:{}", s.device, s.milli)?;
            }
        }
        Ok(())
    }
}

/// The capacity of device `i` of a machine with `total` milli-GPUs: whole
/// devices, and the remainder (if a caller gave a fractional machine) as a
/// last, smaller device.
pub fn device_capacity(total: u64, i: usize) -> u32 {
    total
        .saturating_sub(i as u64 * u64::from(DEVICE_MILLI))
        .min(u64::from(DEVICE_MILLI)) as u32
}

/// The free milli-GPUs of each device of an empty machine with `total`.
pub fn empty_devices(total: u64) -> Vec<u32> {
    let n = total.div_ceil(u64::from(DEVICE_MILLI)) as usize;
    (0..n).map(|i| device_capacity(total, i)).collect()
}

/// True when `demand` can be met by devices with `free` milli-GPUs each.
pub fn fits(free: &[u32], demand: GpuDemand) -> bool {
    match demand {
        GpuDemand::None => true,
        GpuDemand::Share(m) => free.iter().any(|&f| f >= m),
        GpuDemand::Whole(n) => free.iter().filter(|&&f| f == DEVICE_MILLI).count() >= n as usize,
    }
}

/// The devices a task takes by default: a share goes to the device where it
/// fits most tightly (best fit, ties to the lower index), so that whole
/// devices stay whole; whole devices are the lowest-indexed free ones.
/// `None` when the demand does not fit.
pub fn choose(free: &[u32], demand: GpuDemand) -> Option<Vec<GpuSlot>> {
    match demand {
        GpuDemand::None => Some(Vec::new()),
        GpuDemand::Share(m) => free
            .iter()
            .enumerate()
            .filter(|(_, &f)| f >= m)
            .min_by_key(|(i, &f)| (f, *i))
            .map(|(i, _)| {
                vec![GpuSlot {
                    device: i as u32,
                    milli: m,
                }]
            }),
        GpuDemand::Whole(n) => {
            let slots: Vec<GpuSlot> = free
                .iter()
                .enumerate()
                .filter(|(_, &f)| f == DEVICE_MILLI)
                .take(n as usize)
                .map(|(i, _)| GpuSlot {
                    device: i as u32,
                    milli: DEVICE_MILLI,
                })
                .collect();
            (slots.len() == n as usize).then_some(slots)
        }
    }
}

/// Checks that `slots` are a valid placement of `demand` on devices with
/// `free` milli-GPUs: one device for a share, distinct whole free devices
/// for whole ones. The reason when not.
pub fn check_slots(free: &[u32], demand: GpuDemand, slots: &[GpuSlot]) -> Result<(), String> {
    let dev = |s: &GpuSlot| {
        free.get(s.device as usize).copied().ok_or_else(|| {
            format!(
                "device {} does not exist ({} devices)",
                s.device,
                free.len()
            )
        })
    };
    match demand {
        GpuDemand::None if slots.is_empty() => Ok(()),
        GpuDemand::None => Err("a task without GPUs was given devices".into()),
        GpuDemand::Share(m) => match slots {
            [s] if s.milli == m && dev(s)? >= m => Ok(()),
            [s] if s.milli == m => Err(format!(
                "device {} has {} milli free, the share needs {m}",
                s.device,
                dev(s)?
            )),
            _ => Err(format!("a share of {m} milli must use exactly one device")),
        },
        GpuDemand::Whole(n) => {
            if slots.len() != n as usize {
                return Err(format!("{n} whole devices wanted, {} given", slots.len()));
            }
            for (i, s) in slots.iter().enumerate() {
                if s.milli != DEVICE_MILLI || dev(s)? != DEVICE_MILLI {
                    return Err(format!("device {} is not whole and free", s.device));
                }
                if slots[..i].iter().any(|o| o.device == s.device) {
                    return Err(format!("device {} given twice", s.device));
                }
            }
            Ok(())
        }
    }
}

/// Takes `slots` off `free`. The caller has checked them.
pub fn take(free: &mut [u32], slots: &[GpuSlot]) {
    for s in slots {
        let f = &mut free[s.device as usize];
        debug_assert!(*f >= s.milli, "device {} over capacity", s.device);
        *f = f.saturating_sub(s.milli);
    }
}

/// Gives `slots` back to `free`, never past each device's capacity.
pub fn give(free: &mut [u32], total: u64, slots: &[GpuSlot]) {
    for s in slots {
        if let Some(f) = free.get_mut(s.device as usize) {
            *f = (*f + s.milli).min(device_capacity(total, s.device as usize));
        }
    }
}

/// The devices a release without its slots most likely frees: for a share,
/// the lowest-indexed device with that much in use; for whole devices, the
/// highest-indexed fully used ones. Exact bookkeeping passes the slots.
pub fn guess_release(free: &[u32], total: u64, demand: GpuDemand) -> Vec<GpuSlot> {
    let used = |i: usize| device_capacity(total, i).saturating_sub(free[i]);
    match demand {
        GpuDemand::None => Vec::new(),
        GpuDemand::Share(m) => (0..free.len())
            .find(|&i| used(i) >= m)
            .map(|i| {
                vec![GpuSlot {
                    device: i as u32,
                    milli: m,
                }]
            })
            .unwrap_or_default(),
        GpuDemand::Whole(n) => (0..free.len())
            .rev()
            .filter(|&i| free[i] == 0)
            .take(n as usize)
            .map(|i| GpuSlot {
                device: i as u32,
                milli: DEVICE_MILLI,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demands_are_a_share_or_whole_devices() {
        assert_eq!(GpuDemand::parse(0), Ok(GpuDemand::None));
        assert_eq!(GpuDemand::parse(460), Ok(GpuDemand::Share(460)));
        assert_eq!(GpuDemand::parse(2000), Ok(GpuDemand::Whole(2)));
        assert_eq!(GpuDemand::parse(1500), Err(NotADemand { milli: 1500 }));
        assert_eq!(GpuDemand::of(1500), GpuDemand::Whole(2));
    }

    #[test]
    fn a_share_takes_the_tightest_device_and_whole_ones_take_free_devices() {
        let free = [1000, 300, 600, 1000];
        // 460 fits 600 (device 2) and the whole ones; 600 is the tightest.
        assert_eq!(
            choose(&free, GpuDemand::Share(460)),
            Some(vec![GpuSlot {
                device: 2,
                milli: 460
            }])
        );
        let two = choose(&free, GpuDemand::Whole(2)).unwrap();
        assert_eq!(SlotsDisplay(&two).to_string(), "0+3");
        assert_eq!(choose(&free, GpuDemand::Whole(3)), None);
        // Two halves of different devices are not one share of 0.7.
        assert!(!fits(&[500, 500], GpuDemand::Share(700)));
        assert!(check_slots(
            &free,
            GpuDemand::Whole(1),
            &[GpuSlot {
                device: 1,
                milli: 1000
            }]
        )
        .is_err());
        assert_eq!(
            SlotsDisplay(&[GpuSlot {
                device: 3,
                milli: 460
            }])
            .to_string(),
            "3:460"
        );
    }

    #[test]
    fn release_gives_back_to_the_devices() {
        let mut free = empty_devices(2000);
        let s = choose(&free, GpuDemand::Share(460)).unwrap();
        take(&mut free, &s);
        assert_eq!(free, vec![540, 1000]);
        let guess = guess_release(&free, 2000, GpuDemand::Share(460));
        give(&mut free, 2000, &guess);
        assert_eq!(free, vec![1000, 1000]);
        assert_eq!(empty_devices(2500), vec![1000, 1000, 500]);
    }
}
