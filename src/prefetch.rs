//! Software prefetch: the engine looks a whole batch up before it folds it,
//! and asks for the memory each series, window and histogram bucket will need
//! ahead of time, so the cache misses of independent series overlap instead of
//! queueing one behind another.

/// Hints that the cache lines of `value` will soon be read. Never faults and
/// never changes what a program computes; a no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch<T>(value: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = value.cast::<i8>();
        let lines = std::mem::size_of::<T>().div_ceil(64).clamp(1, 4);
        for line in 0..lines {
            // SAFETY: a prefetch is a hint that never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
