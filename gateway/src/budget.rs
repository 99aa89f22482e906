//! The process memory budget: one byte counter that everything in flight draws from.
//!
//! Owns the accounting only; each stage reserves what it holds. The budget is split in two at
//! start-up (see [`MemoryPlan`]):
//! - *fixed* parts, sized from the config and reserved once: the dedup window, the Parquet files
//!   being built and waiting for upload, the log writer's group buffer, per-connection buffers and
//!   the process's own baseline;
//! - the rest, drawn per request: body bytes as they are read, decompressed bytes as they are
//!   produced, decoded events, and the Arrow rows until the file writer has encoded them.
//!
//! Invariants:
//! - A reservation is taken *before* the memory it stands for is allocated, so the sum of
//!   reservations bounds what requests hold; past it the request is refused (503 `overloaded`),
//!   never queued and never grown into.
//! - A [`Reservation`] gives its bytes back when dropped, whichever path the request takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes the process needs whatever the traffic: code, runtime, thread stacks, allocator slack.
/// Measured as the peak RSS of an idle gateway with the dedup window and writer reservations
/// subtracted (see docs/performance.md), rounded up.
pub const BASELINE_BYTES: usize = 48 << 20;

/// Per open connection: hyper's read and write buffers (each up to `max_header_bytes`, at least
/// 8 KiB) plus the task and socket.
pub fn connection_bytes(max_header_bytes: usize) -> usize {
    2 * max_header_bytes.max(8 << 10) + (16 << 10)
}

/// The request budget was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gateway is at its memory budget of {limit_bytes} bytes")]
pub struct OverBudget {
    pub limit_bytes: usize,
}

/// A byte counter with a hard limit, shared by every request.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit_bytes,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit
    }

    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserve `bytes`, or fail without reserving anything.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, OverBudget> {
        self.take(bytes)?;
        Ok(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// An empty reservation, to grow as data arrives.
    pub fn empty(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize) -> Result<(), OverBudget> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| {
                metrics::counter!(crate::metrics::BUDGET_REFUSALS).increment(1);
                OverBudget {
                    limit_bytes: self.limit,
                }
            })
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes held against the budget; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Hold `more` bytes on top; on failure the reservation is unchanged.
    pub fn grow(&mut self, more: usize) -> Result<(), OverBudget> {
        self.budget.take(more)?;
        self.bytes += more;
        Ok(())
    }

    /// Hold exactly `bytes`: grows (may fail) or gives back the difference.
    pub fn resize(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes > self.bytes {
            self.grow(bytes - self.bytes)
        } else {
            self.budget.give(self.bytes - bytes);
            self.bytes = bytes;
            Ok(())
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// How the budget is split, computed from the config at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub total_bytes: usize,
    pub baseline_bytes: usize,
    pub dedup_bytes: usize,
    /// Parquet files: those being built, one waiting and one uploading (each up to
    /// `flush.max_bytes`), with room for buffer growth; and the late lane's buffer and sealed
    /// cut (each up to a quarter of `flush.max_bytes`).
    pub writer_bytes: usize,
    pub wal_group_bytes: usize,
    pub connection_bytes: usize,
    /// What is left for requests in flight.
    pub requests_bytes: usize,
}

impl MemoryPlan {
    /// `None` when the fixed parts leave nothing for requests.
    pub fn new(
        total_bytes: usize,
        dedup_bytes: usize,
        flush_max_bytes: usize,
        wal_group_bytes: usize,
        connections: usize,
        max_header_bytes: usize,
    ) -> Option<Self> {
        let writer_bytes = flush_max_bytes
            .saturating_mul(4)
            .saturating_add(flush_max_bytes / 2);
        let connection_bytes = connections.saturating_mul(connection_bytes(max_header_bytes));
        let fixed = [
            BASELINE_BYTES,
            dedup_bytes,
            writer_bytes,
            wal_group_bytes,
            connection_bytes,
        ]
        .iter()
        .try_fold(0usize, |acc, &b| acc.checked_add(b))?;
        Some(Self {
            total_bytes,
            baseline_bytes: BASELINE_BYTES,
            dedup_bytes,
            writer_bytes,
            wal_group_bytes,
            connection_bytes,
            requests_bytes: total_bytes.checked_sub(fixed)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_limit_and_returned_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(60).unwrap();
        assert_eq!(
            budget.try_reserve(41).unwrap_err(),
            OverBudget { limit_bytes: 100 }
        );
        let mut b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.used_bytes(), 100);
        assert!(b.grow(1).is_err());
        assert_eq!(b.bytes(), 40, "a failed grow changes nothing");
        drop(a);
        b.grow(50).unwrap();
        b.resize(10).unwrap();
        assert_eq!(budget.used_bytes(), 10);
        drop(b);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn the_plan_leaves_requests_what_the_fixed_parts_do_not_take() {
        let plan =
            MemoryPlan::new(512 << 20, 68 << 20, 32 << 20, 16 << 20, 1024, 16 << 10).unwrap();
        let fixed = plan.baseline_bytes
            + plan.dedup_bytes
            + plan.writer_bytes
            + plan.wal_group_bytes
            + plan.connection_bytes;
        assert_eq!(plan.requests_bytes, plan.total_bytes - fixed);
        assert!(MemoryPlan::new(64 << 20, 68 << 20, 32 << 20, 16 << 20, 1024, 16 << 10).is_none());
    }
}
