//! Counting verdicts: every packet and socket call a program decides on, by direction and
//! reason, in `TWILL_METRICS`.

use twill_abi::metrics::{Direction, Reason, metric_index};

use crate::maps::TWILL_METRICS;

#[inline(always)]
pub(crate) fn count(direction: Direction, reason: Reason, bytes: u32) {
    if let Some(slot) = TWILL_METRICS.get_ptr_mut(metric_index(direction, reason)) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it
        // points at this CPU's value for the slot, valid for the program's run; BPF
        // programs run with migration disabled, so no other CPU writes this value.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
        }
    }
}
