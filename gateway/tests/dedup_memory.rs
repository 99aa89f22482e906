//! The dedup window's memory, measured with a counting allocator rather than estimated: what
//! the memory budget reserves for it ([`DedupConfig::memory_bytes`]) is what it allocates, and
//! a flood of unique ids does not grow it.
//!
//! Its own test binary, so the counting allocator sees nothing else.

use std::alloc::System;
use std::time::Duration;

use gateway::config::DEFAULT_MAX_IDS;
use gateway::dedup::{DedupConfig, DedupWindow};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn held(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize - c.bytes_deallocated as isize + c.bytes_reallocated
}

#[test]
fn the_window_allocates_what_the_budget_reserves_and_no_more_under_a_flood() {
    for max_ids in [DEFAULT_MAX_IDS, 1_000_003, 5_000] {
        let config = DedupConfig {
            window: Duration::from_secs(600),
            max_ids,
        };
        let region = Region::new(GLOBAL);
        let window = DedupWindow::new(config);
        let at_start = held(&region);
        // Three times the capacity in unique ids, in request-sized chunks (the keys vector is
        // freed each time): the window rotates early instead of growing.
        let mut next = 0u128;
        let mut peak = at_start;
        while next < 3 * max_ids as u128 {
            let keys: Vec<u128> = (next..next + 1000)
                .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            next += 1000;
            window.remember(keys, 0, 0);
            peak = peak.max(held(&region));
        }
        assert!(window.len() <= max_ids, "{} ids kept", window.len());
        let reserved = config.memory_bytes() as isize;
        let per_id = at_start as f64 / max_ids as f64;
        println!(
            "max_ids {max_ids}: allocated {at_start} bytes at start ({per_id:.1} per id), \
             reserved {reserved}, peak while flooded {peak}"
        );
        assert_eq!(at_start, reserved, "the reservation is the allocation");
        // The only growth allowed while flooding is the transient keys vector of one call.
        assert!(
            peak - at_start <= 16 * 1000 + 64,
            "grew by {}",
            peak - at_start
        );
        drop(window);
    }
}
