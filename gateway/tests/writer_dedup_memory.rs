//! A cluster writer's dedup state per key held, measured with a counting allocator: the figure
//! the capacity model in docs/cluster.md builds on. Keys older than the window (and the clock
//! slack) are dropped and their room reused, so a steady stream does not grow it.
//!
//! Its own test binary, so the counting allocator sees nothing else.

use std::alloc::System;
use std::time::Duration;

use gateway::cluster::writer::{CLOCK_SLACK, Seen};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn held(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize - c.bytes_deallocated as isize + c.bytes_reallocated
}

fn key(i: u64) -> u128 {
    u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
}

#[test]
fn a_writer_holds_about_a_hundred_bytes_per_key_and_reuses_them() {
    let window = Duration::from_secs(600);
    for n in [100_000u64, 1_000_000, 3_000_000] {
        let region = Region::new(GLOBAL);
        let mut seen = Seen::new(window);
        // n unique keys within one window: all held.
        let step = (window.as_micros() as u64 / n).max(1) as i64;
        for i in 0..n {
            assert!(seen.admit(key(i), i as i64 * step));
        }
        assert_eq!(seen.len(), n as usize);
        let first = held(&region);
        let per_key = first as f64 / n as f64;
        // The next n keys, a whole window and the slack later: the first ones are dropped.
        let later = (window + CLOCK_SLACK).as_micros() as i64 + n as i64 * step;
        for i in 0..n {
            assert!(seen.admit(key(n + i), later + i as i64 * step));
        }
        let second = held(&region);
        println!(
            "{n} keys: {per_key:.1} bytes per key held; after a window of as many new keys: \
             {} keys, {:.1} bytes per key",
            seen.len(),
            second as f64 / seen.len() as f64
        );
        assert!((24.0..=160.0).contains(&per_key), "{per_key} bytes per key");
        assert!(seen.len() <= n as usize + 1, "old keys are dropped");
        assert!(
            second as f64 <= first as f64 * 1.25,
            "the room is reused: {first} then {second} bytes"
        );
    }
}
