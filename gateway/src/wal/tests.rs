//! Write, replay, torn tail, checksum mismatch, segment retirement.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::record::ENCODING_IDENTITY;
use super::*;
use crate::batch::PartitionBounds;
use crate::health::Health;
use crate::validate::BodyFormat;

fn record(seq: u64, body: &str) -> BatchRecord {
    BatchRecord {
        seq,
        received_micros: 1_764_419_696_789_000,
        bounds: PartitionBounds {
            max_past_micros: 1,
            max_future_micros: 2,
        },
        format: BodyFormat::JsonArray,
        encoding: ENCODING_IDENTITY,
        fresh: vec![true, false, true],
        source: None,
        body: Bytes::from(body.to_owned()),
    }
}

/// Write records `seqs` as one segment file named after the first.
fn write_segment(dir: &Path, seqs: std::ops::RangeInclusive<u64>) -> std::path::PathBuf {
    let mut buf = BytesMut::new();
    for seq in seqs.clone() {
        record(seq, &format!("body {seq}")).encode_framed(&mut buf);
    }
    let path = segment::segment_path(dir, *seqs.start());
    fs::write(&path, &buf).unwrap();
    path
}

fn replayed(dir: &Path, after: u64) -> Vec<u64> {
    let set = open_segments(dir).unwrap();
    set.replay(after).map(|r| r.unwrap().seq).collect()
}

#[test]
fn replay_returns_records_after_the_durable_point_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1..=3);
    write_segment(dir.path(), 4..=6);
    let set = open_segments(dir.path()).unwrap();
    assert_eq!(set.last_seq, 6);
    let all: Vec<BatchRecord> = set.replay(0).map(Result::unwrap).collect();
    assert_eq!(all.len(), 6);
    assert_eq!(all[4], record(5, "body 5"));
    assert_eq!(replayed(dir.path(), 2), [3, 4, 5, 6]);
    assert_eq!(replayed(dir.path(), 6), Vec::<u64>::new());
}

#[test]
fn a_torn_tail_is_cut_off_and_the_rest_survives() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_segment(dir.path(), 1..=3);
    let full = fs::read(&path).unwrap();
    for cut in [full.len() - 1, full.len() - 20, full.len() - 40] {
        let tmp = tempfile::tempdir().unwrap();
        let p = segment::segment_path(tmp.path(), 1);
        fs::write(&p, &full[..cut]).unwrap();
        assert_eq!(replayed(tmp.path(), 0), [1, 2], "cut at {cut}");
        // The file itself was repaired: it now ends at the last whole record.
        let set = open_segments(tmp.path()).unwrap();
        assert_eq!(set.last_seq, 2);
        assert_eq!(fs::metadata(&p).unwrap().len(), set.bytes);
    }
}

#[test]
fn a_checksum_mismatch_at_the_tail_drops_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_segment(dir.path(), 1..=3);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    assert_eq!(replayed(dir.path(), 0), [1, 2]);
}

#[test]
fn corruption_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_segment(dir.path(), 1..=3);
    write_segment(dir.path(), 4..=5);
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let err = open_segments(dir.path()).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

#[test]
fn retirement_deletes_only_fully_durable_segments_and_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    write_segment(dir.path(), 1..=3);
    write_segment(dir.path(), 4..=6);
    write_segment(dir.path(), 7..=9);
    assert!(retire(dir.path(), 5).unwrap() > 0);
    assert_eq!(replayed(dir.path(), 0), [4, 5, 6, 7, 8, 9]);
    retire(dir.path(), 6).unwrap();
    assert_eq!(replayed(dir.path(), 0), [7, 8, 9]);
    retire(dir.path(), 9).unwrap();
    assert_eq!(
        replayed(dir.path(), 0),
        [7, 8, 9],
        "the newest segment stays"
    );
}

#[tokio::test]
async fn the_writer_numbers_syncs_and_passes_records_downstream_before_acking() {
    let dir = tempfile::tempdir().unwrap();
    let set = open_segments(dir.path()).unwrap();
    let (tx, rx) = flume::unbounded();
    let (wal, thread) = WalWriter {
        dir: dir.path().to_owned(),
        segment_bytes: 100, // roll often
        budget_bytes: 1 << 30,
        queue_len: 64,
    }
    .spawn(
        &set,
        Arc::new(AtomicU64::new(0)),
        tx,
        Arc::new(Health::new()),
    )
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(
            wal.try_append(record(0, &format!("b{i}")), Vec::new(), Vec::new(), None)
                .unwrap(),
        );
    }
    let mut seqs = Vec::new();
    for ack in acks {
        let seq = ack.await.unwrap().unwrap();
        // Already downstream when acknowledged.
        assert!(rx.iter().take(1).any(|b| b.seq == seq));
        seqs.push(seq);
    }
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    wal.close().await;
    thread.join().unwrap();
    assert!(matches!(
        wal.try_append(record(0, "late"), Vec::new(), Vec::new(), None),
        Err(AppendError::Closed)
    ));
    let set = open_segments(dir.path()).unwrap();
    assert!(set.segments.len() > 1, "segments rolled");
    let bodies: Vec<Bytes> = set.replay(0).map(|r| r.unwrap().body).collect();
    assert_eq!(bodies[3], Bytes::from("b3"));
    assert_eq!(bodies.len(), 10);
}

#[tokio::test]
async fn the_disk_budget_refuses_appends_without_logging_them() {
    let dir = tempfile::tempdir().unwrap();
    let set = open_segments(dir.path()).unwrap();
    let (tx, _rx) = flume::unbounded();
    let (wal, _thread) = WalWriter {
        dir: dir.path().to_owned(),
        segment_bytes: 1 << 20,
        budget_bytes: 1,
        queue_len: 4,
    }
    .spawn(
        &set,
        Arc::new(AtomicU64::new(0)),
        tx,
        Arc::new(Health::new()),
    )
    .unwrap();
    wal.try_append(record(0, "first"), Vec::new(), Vec::new(), None)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let err = wal
        .try_append(record(0, "second"), Vec::new(), Vec::new(), None)
        .unwrap_err();
    assert_eq!(err, AppendError::OverBudget { budget_bytes: 1 });
    wal.close().await;
    assert_eq!(replayed(dir.path(), 0), [1]);
}

proptest! {
    /// Truncating a log anywhere never loses a record that ends before the cut, and never
    /// yields a record that does not.
    #[test]
    fn any_truncation_keeps_exactly_the_whole_records(cut_frac in 0.0f64..1.0) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1..=5);
        let full = fs::read(&path).unwrap();
        let cut = (full.len() as f64 * cut_frac) as usize;
        fs::write(&path, &full[..cut]).unwrap();
        let mut ends = Vec::new();
        let mut buf = BytesMut::new();
        for seq in 1..=5u64 {
            record(seq, &format!("body {seq}")).encode_framed(&mut buf);
            ends.push(buf.len());
        }
        let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
        prop_assert_eq!(replayed(dir.path(), 0), (1..=whole).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_append_without_acknowledging_anything() {
    let dir = tempfile::tempdir().unwrap();
    let set = open_segments(dir.path()).unwrap();
    // The segment the writer opens is /dev/full: every write fails with ENOSPC, like a full disk.
    std::os::unix::fs::symlink("/dev/full", segment::segment_path(dir.path(), 1)).unwrap();
    let (tx, rx) = flume::unbounded();
    let (wal, thread) = WalWriter {
        dir: dir.path().to_owned(),
        segment_bytes: 1 << 20,
        budget_bytes: 1 << 30,
        queue_len: 4,
    }
    .spawn(
        &set,
        Arc::new(AtomicU64::new(0)),
        tx,
        Arc::new(Health::new()),
    )
    .unwrap();
    for _ in 0..3 {
        let ack = wal
            .try_append(record(0, "x"), Vec::new(), Vec::new(), None)
            .unwrap();
        let err = ack.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, AppendError::Io(m) if m.contains("No space")),
            "{err:?}"
        );
    }
    wal.close().await;
    thread.join().unwrap();
    assert!(
        rx.try_recv().is_err(),
        "nothing may go downstream unacknowledged"
    );
}
