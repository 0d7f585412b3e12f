//! What a task sees of its machine's GPU devices: exactly those of its
//! placement.
//!
//! - `CUDA_VISIBLE_DEVICES`: the device indexes, comma-joined (`0,1`); set,
//!   empty, for a task without GPUs, so that it sees none (the CUDA
//!   runtime hides every device when the variable is set and empty).
//! - `SCHED_GPUS`: the placement as `schedctl simulate`'s placements CSV
//!   writes it: whole devices joined by `+` (`0+1`), a share as
//!   `DEVICE:MILLI` (`3:460`); empty for none. A GPU-sharing runtime reads
//!   the share from it.

use sched_core::gpu::{GpuSlot, SlotsDisplay};
use sched_proto::pb;

/// The environment variables that expose `slots` to a task.
pub fn gpu_env(slots: &[pb::GpuSlot]) -> [(&'static str, String); 2] {
    let slots: Vec<GpuSlot> = slots
        .iter()
        .map(|s| GpuSlot {
            device: s.device,
            milli: s.milli,
        })
        .collect();
    let visible: Vec<String> = slots.iter().map(|s| s.device.to_string()).collect();
    [
        ("CUDA_VISIBLE_DEVICES", visible.join(",")),
        ("SCHED_GPUS", SlotsDisplay(&slots).to_string()),
    ]
}

/// Checks a placement's devices against a machine with `devices` GPUs:
/// each index on the machine and named once, each share 1..=1000 milli.
/// (The local agent chose them; a node started with fewer `--gpus` than
/// it registered before, or a bug, must not run a task on devices it
/// does not have.)
pub fn check_slots(slots: &[pb::GpuSlot], devices: u32) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for s in slots {
        if s.device >= devices {
            return Err(format!(
                "device {} is not on this machine ({devices} GPU device(s))",
                s.device
            ));
        }
        if !seen.insert(s.device) {
            return Err(format!("device {} named twice", s.device));
        }
        if s.milli == 0 || s.milli > 1000 {
            return Err(format!(
                "device {}: a share of {} milli-GPU is not in 1..=1000",
                s.device, s.milli
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(device: u32, milli: u32) -> pb::GpuSlot {
        pb::GpuSlot { device, milli }
    }

    #[test]
    fn devices_the_machine_lacks_are_refused() {
        assert_eq!(check_slots(&[slot(0, 1000), slot(1, 500)], 2), Ok(()));
        assert_eq!(check_slots(&[], 0), Ok(()));
        let err = check_slots(&[slot(2, 1000)], 2).unwrap_err();
        assert!(err.contains("device 2 is not on this machine"), "{err}");
        assert!(check_slots(&[slot(0, 500), slot(0, 500)], 2)
            .unwrap_err()
            .contains("named twice"));
        assert!(check_slots(&[slot(0, 1001)], 1)
            .unwrap_err()
            .contains("not in 1..=1000"));
        assert!(check_slots(&[slot(0, 0)], 1).is_err());
    }

    #[test]
    fn whole_devices_a_share_and_none() {
        assert_eq!(
            gpu_env(&[slot(0, 1000), slot(1, 1000)]),
            [
                ("CUDA_VISIBLE_DEVICES", "0,1".to_string()),
                ("SCHED_GPUS", "0+1".to_string())
            ]
        );
        assert_eq!(
            gpu_env(&[slot(3, 460)]),
            [
                ("CUDA_VISIBLE_DEVICES", "3".to_string()),
                ("SCHED_GPUS", "3:460".to_string())
            ]
        );
        assert_eq!(
            gpu_env(&[]),
            [
                ("CUDA_VISIBLE_DEVICES", String::new()),
                ("SCHED_GPUS", String::new())
            ]
        );
    }
}
