//! `ValidBatch -> FreshBatch`: drop events whose `event_id` was already accepted recently.
//!
//! Owns the dedup window. Knows nothing of HTTP, the log or storage.
//!
//! How it works: each `event_id` is reduced to a 128-bit xxh3 hash (a collision among 10^9 ids has
//! a probability below 10^-20) and kept in one of two generations of hash sets. Lookups check both;
//! every `window` the older generation is dropped. So an id is remembered for at least `window`
//! and at most twice that.
//!
//! Invariants:
//! - Memory is fixed whatever clients send: both generations are allocated at start for
//!   `max_ids / 2` ids each and never grow; when the newer one is full it is rotated early, so the
//!   window shrinks under a flood instead of memory growing. [`DedupConfig::memory_bytes`] is the
//!   size of both tables (a test measures it with a counting allocator): 16-byte keys plus a
//!   control byte per bucket, buckets a power of two at most 7/8 full, so about 19.4 bytes per id
//!   when `max_ids / 2` is just under 7/8 of a power of two (as the default is).
//! - An id is inserted only when its event is accepted; if the batch then fails to be logged, the
//!   caller calls [`DedupWindow::forget`] so that the client's retry is not counted as a duplicate.
//! - One lock acquisition per batch, not per event.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use crate::validate::ValidBatch;

/// The 128-bit identity of an event id.
pub type EventKey = u128;

pub fn event_key(event_id: &str) -> EventKey {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// A batch after dedup: the decoded events plus which of them are new.
#[derive(Debug)]
pub struct FreshBatch<'a> {
    pub valid: ValidBatch<'a>,
    /// `fresh[i]` tells whether `valid.events[i]` is new (to be written).
    pub fresh: Vec<bool>,
    /// Keys inserted for this batch, for [`DedupWindow::forget`].
    pub inserted: Vec<EventKey>,
}

impl FreshBatch<'_> {
    pub fn accepted(&self) -> usize {
        self.inserted.len()
    }

    pub fn duplicates(&self) -> usize {
        self.valid.events.len() - self.inserted.len()
    }

    /// A batch whose freshness was decided earlier (replay of the write-ahead log).
    pub fn with_fresh(valid: ValidBatch<'_>, fresh: Vec<bool>) -> FreshBatch<'_> {
        FreshBatch {
            valid,
            fresh,
            inserted: Vec::new(),
        }
    }
}

/// Keys are already uniform hashes: use their low bits as the table hash.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64(bytes);
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type KeySet = HashSet<EventKey, BuildHasherDefault<KeyHasher>>;

#[derive(Debug, Clone, Copy)]
pub struct DedupConfig {
    /// Duplicates are caught for at least this long after the first copy.
    pub window: Duration,
    /// Most ids kept in memory (both generations together).
    pub max_ids: usize,
}

impl DedupConfig {
    /// Ids one generation holds.
    fn generation_ids(&self) -> usize {
        (self.max_ids / 2).max(1)
    }

    /// Bytes the two generations allocate at start (and never more).
    pub fn memory_bytes(&self) -> usize {
        2 * table_bytes(self.generation_ids())
    }
}

/// Allocation of a std `HashSet<u128>` made `with_capacity(ids)`: a power-of-two number of
/// buckets at most 7/8 full, each a 16-byte key and a control byte, plus one group of control
/// bytes. (Checked against a counting allocator in `tests/dedup_memory.rs`.)
pub fn table_bytes(ids: usize) -> usize {
    const GROUP: usize = 16;
    let buckets = if ids < 8 {
        if ids < 4 { 4 } else { 8 }
    } else {
        (ids * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<EventKey>() + 1) + GROUP
}

struct Generations {
    current: KeySet,
    previous: KeySet,
    /// Wall-clock milliseconds when `current` was started.
    started_ms: i64,
}

pub struct DedupWindow {
    config: DedupConfig,
    inner: Mutex<Generations>,
}

impl std::fmt::Debug for DedupWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupWindow")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DedupWindow {
    /// Allocates both generations at once: [`DedupConfig::memory_bytes`].
    pub fn new(config: DedupConfig) -> Self {
        let ids = config.generation_ids();
        Self {
            config,
            inner: Mutex::new(Generations {
                current: KeySet::with_capacity_and_hasher(ids, Default::default()),
                previous: KeySet::with_capacity_and_hasher(ids, Default::default()),
                started_ms: 0,
            }),
        }
    }

    /// Mark each event of `valid` as fresh or duplicate (also within the batch) and remember the
    /// fresh ones. `now_ms` is the receive time in Unix milliseconds.
    pub fn admit<'a>(&self, valid: ValidBatch<'a>, now_ms: i64) -> FreshBatch<'a> {
        let mut fresh = Vec::with_capacity(valid.events.len());
        let mut inserted = Vec::with_capacity(valid.events.len());
        let remembered = {
            let mut g = self.lock();
            g.advance(&self.config, now_ms);
            for event in &valid.events {
                let key = event_key(&event.event_id);
                g.make_room(&self.config, now_ms);
                let is_new = !g.previous.contains(&key) && g.current.insert(key);
                if is_new {
                    inserted.push(key);
                }
                fresh.push(is_new);
            }
            g.current.len() + g.previous.len()
        };
        metrics::gauge!(crate::metrics::DEDUP_IDS).set(remembered as f64);
        FreshBatch {
            valid,
            fresh,
            inserted,
        }
    }

    /// Undo [`admit`](Self::admit) for a batch that was not acknowledged.
    pub fn forget(&self, keys: &[EventKey]) {
        let mut g = self.lock();
        for key in keys {
            g.current.remove(key);
        }
    }

    /// Remember ids accepted in an earlier run (replayed from the log), received at `received_ms`.
    pub fn remember(
        &self,
        keys: impl IntoIterator<Item = EventKey>,
        received_ms: i64,
        now_ms: i64,
    ) {
        if now_ms.saturating_sub(received_ms) > self.config.window.as_millis() as i64 {
            return;
        }
        let mut g = self.lock();
        g.advance(&self.config, now_ms);
        for key in keys {
            g.make_room(&self.config, now_ms);
            if !g.previous.contains(&key) {
                g.current.insert(key);
            }
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding the lock leaves the sets valid: keep going with them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Generations {
    fn advance(&mut self, config: &DedupConfig, now_ms: i64) {
        let window_ms = config.window.as_millis() as i64;
        let age = now_ms - self.started_ms;
        if age >= 2 * window_ms {
            self.previous.clear();
            self.current.clear();
            self.started_ms = now_ms;
        } else if age >= window_ms {
            self.rotate(now_ms);
        }
    }

    /// Rotate early when the newer generation is full, so the tables never grow.
    fn make_room(&mut self, config: &DedupConfig, now_ms: i64) {
        if self.current.len() >= config.generation_ids() {
            metrics::counter!(crate::metrics::DEDUP_EARLY_ROTATIONS).increment(1);
            self.rotate(now_ms);
        }
    }

    fn rotate(&mut self, now_ms: i64) {
        std::mem::swap(&mut self.previous, &mut self.current);
        self.current.clear();
        self.started_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{BodyFormat, decode};

    const MIN: i64 = 60_000;

    fn window(max_ids: usize) -> DedupWindow {
        DedupWindow::new(DedupConfig {
            window: Duration::from_secs(600),
            max_ids,
        })
    }

    fn body(ids: &[&str]) -> String {
        let events: Vec<String> = ids
            .iter()
            .map(|id| {
                format!(
                    r#"{{"event_id":"{id}","type":"conversion","ts":1764419696789,"user_id":"u","name":"n"}}"#
                )
            })
            .collect();
        format!("[{}]", events.join(","))
    }

    fn admit(w: &DedupWindow, ids: &[&str], now_ms: i64) -> Vec<bool> {
        let b = body(ids);
        let valid = decode(b.as_bytes(), BodyFormat::JsonArray, 100).unwrap();
        w.admit(valid, now_ms).fresh
    }

    #[test]
    fn duplicates_within_and_across_batches() {
        let w = window(1000);
        assert_eq!(admit(&w, &["a", "b", "a"], 0), [true, true, false]);
        assert_eq!(admit(&w, &["b", "c"], MIN), [false, true]);
    }

    #[test]
    fn ids_are_remembered_for_the_window_and_forgotten_after_twice_that() {
        let w = window(1000);
        admit(&w, &["a"], 0);
        assert_eq!(admit(&w, &["a"], 9 * MIN), [false]);
        // Rotated at 10 minutes: "a" is in the previous generation, still caught.
        assert_eq!(admit(&w, &["a"], 11 * MIN), [false]);
        assert_eq!(admit(&w, &["a"], 31 * MIN), [true]);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_unique_ids() {
        let w = window(100);
        for i in 0..1000 {
            let id = format!("id-{i}");
            admit(&w, &[&id], 0);
            assert!(w.len() <= 100, "{} ids kept", w.len());
        }
    }

    #[test]
    fn forget_undoes_admit() {
        let w = window(1000);
        let b = body(&["a", "b"]);
        let fresh = w.admit(decode(b.as_bytes(), BodyFormat::JsonArray, 10).unwrap(), 0);
        assert_eq!(fresh.accepted(), 2);
        w.forget(&fresh.inserted);
        assert_eq!(admit(&w, &["a", "b"], 0), [true, true]);
    }

    #[test]
    fn remembered_ids_from_a_replay_count_as_duplicates() {
        let w = window(1000);
        w.remember([event_key("a")], 5 * MIN, 12 * MIN);
        w.remember([event_key("old")], 0, 12 * MIN);
        assert_eq!(admit(&w, &["a", "old"], 12 * MIN), [false, true]);
    }
}
