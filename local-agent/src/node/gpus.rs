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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(device: u32, milli: u32) -> pb::GpuSlot {
        pb::GpuSlot { device, milli }
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
