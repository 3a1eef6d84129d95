//! The global allocator's settings (mimalloc v3, declared in `main.rs` and in the benchmark).
//!
//! mimalloc returns memory it has not used for `purge_delay` milliseconds (v3 default: 1,000)
//! to the operating system (`MADV_DONTNEED`), and the next allocation there takes fresh,
//! zero-filled pages again. A processor under load frees and reuses its per-delivery memory
//! (tasks, bodies, records, HTTP frames) in waves: with the default, about a fifth of its CPU
//! went to mimalloc's page handling and the kernel's page faults (docs/benchmarks.md, issue 15).
//! We keep freed memory for [`PURGE_DELAY_MS`] instead: memory unused for that long still goes
//! back, so the resident size still falls after a burst. `MIMALLOC_PURGE_DELAY` in the
//! environment wins, as mimalloc documents.

/// How long freed memory is kept before it is returned to the OS, in milliseconds.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (mimalloc.h), which
/// `libmimalloc-sys` does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies our settings; call first thing in `main`, before threads start.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain setter of a global option; mimalloc reads it at each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}

/// The purge delay in force (milliseconds; -1 = never).
#[allow(clippy::useless_conversion)] // c_long is i64 on 64-bit Linux, i32 elsewhere
pub fn purge_delay_ms() -> i64 {
    // SAFETY: plain getter of a global option.
    i64::from(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_index_is_mimallocs_purge_delay_and_tune_sets_it() {
        // The v3 default (1,000 ms) is what index 15 reads before we set it: a wrong index
        // (another option) would read something else.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1_000, "mi_option_t 15 is not purge_delay");
            tune();
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }
}
