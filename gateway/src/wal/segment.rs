//! Segment files: naming, scanning with checksum checks, torn-tail repair, replay and retirement.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::WalError;
use super::record::{BatchRecord, FRAME_HEADER, MAX_PAYLOAD};

const SUFFIX: &str = ".wal";

/// One segment file; its records are `first_seq..` up to the next segment's first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segments on disk, oldest first, after the torn tail (if any) was cut off.
#[derive(Debug)]
pub struct SegmentSet {
    pub dir: PathBuf,
    pub segments: Vec<Segment>,
    /// Highest sequence number in the log (0 when empty).
    pub last_seq: u64,
    /// Bytes of all segments.
    pub bytes: u64,
}

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// The segments in `dir`, oldest first, read-only and unchecked: for reading records that are
/// known to be whole (at or below a sequence already synced) while the writer appends.
pub fn list_segments(dir: &Path) -> io::Result<SegmentSet> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first_seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(first_seq) = first_seq {
            segments.push(Segment { first_seq, path });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(SegmentSet {
        dir: dir.to_owned(),
        segments,
        last_seq: 0,
        bytes: 0,
    })
}

/// List, check and repair the log in `dir` (created if missing).
pub fn open_segments(dir: &Path) -> Result<SegmentSet, WalError> {
    fs::create_dir_all(dir)?;
    let segments = list_segments(dir)?.segments;
    let mut last_seq = 0;
    let mut bytes = 0;
    let count = segments.len();
    for (i, segment) in segments.iter().enumerate() {
        let data = Bytes::from(fs::read(&segment.path)?);
        let scan = scan(&data);
        if let Some(bad) = &scan.bad {
            if i + 1 < count {
                return Err(WalError::Corrupt {
                    segment: segment.path.display().to_string(),
                    offset: scan.valid_len as u64,
                    reason: bad.clone(),
                });
            }
            // The last segment ends in a record that was being written when the process died.
            tracing::warn!(
                segment = %segment.path.display(),
                offset = scan.valid_len,
                reason = %bad,
                "dropping torn write-ahead log tail (never acknowledged)"
            );
            let file = fs::OpenOptions::new().write(true).open(&segment.path)?;
            file.set_len(scan.valid_len as u64)?;
            file.sync_all()?;
        }
        if let Some(seq) = scan.last_seq {
            last_seq = seq;
        }
        bytes += scan.valid_len as u64;
    }
    Ok(SegmentSet {
        dir: dir.to_owned(),
        segments,
        last_seq,
        bytes,
    })
}

struct Scan {
    valid_len: usize,
    last_seq: Option<u64>,
    bad: Option<String>,
}

/// Walk the records of one segment image, stopping at the first one that does not check out.
fn scan(data: &Bytes) -> Scan {
    let mut offset = 0;
    let mut last_seq = None;
    let mut records = Records { data, offset: 0 };
    loop {
        match records.next() {
            None => {
                return Scan {
                    valid_len: offset,
                    last_seq,
                    bad: None,
                };
            }
            Some(Err(reason)) => {
                return Scan {
                    valid_len: offset,
                    last_seq,
                    bad: Some(reason),
                };
            }
            Some(Ok(r)) => {
                last_seq = Some(r.seq);
                offset = records.offset;
            }
        }
    }
}

/// Records of one segment image.
struct Records<'a> {
    data: &'a Bytes,
    offset: usize,
}

impl Iterator for Records<'_> {
    type Item = Result<BatchRecord, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.data[self.offset..];
        if rest.is_empty() {
            return None;
        }
        if rest.len() < FRAME_HEADER {
            return Some(Err(format!(
                "{} stray bytes after the last record",
                rest.len()
            )));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD || rest.len() < FRAME_HEADER + len {
            return Some(Err(format!("record of {len} bytes runs past the end")));
        }
        let start = self.offset + FRAME_HEADER;
        let payload = self.data.slice(start..start + len);
        if crc32c::crc32c(&payload) != crc {
            return Some(Err("checksum mismatch".to_owned()));
        }
        match BatchRecord::decode_payload(payload) {
            Ok(record) => {
                self.offset = start + len;
                Some(Ok(record))
            }
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

/// Iterates the records with `seq > after`, oldest first, one segment in memory at a time.
#[derive(Debug)]
pub struct Replay {
    segments: std::vec::IntoIter<Segment>,
    current: Option<(Bytes, usize)>,
    after: u64,
}

impl SegmentSet {
    pub fn replay(&self, after: u64) -> Replay {
        // Skip whole segments that end at or before `after`.
        let keep: Vec<Segment> = self
            .segments
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.segments
                    .get(i + 1)
                    .is_none_or(|next| next.first_seq > after + 1)
            })
            .map(|(_, s)| s.clone())
            .collect();
        Replay {
            segments: keep.into_iter(),
            current: None,
            after,
        }
    }
}

impl Iterator for Replay {
    type Item = Result<BatchRecord, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((data, offset)) = &mut self.current {
                let mut records = Records {
                    data,
                    offset: *offset,
                };
                match records.next() {
                    Some(Ok(r)) => {
                        *offset = records.offset;
                        if r.seq > self.after {
                            return Some(Ok(r));
                        }
                        continue;
                    }
                    Some(Err(reason)) => {
                        return Some(Err(WalError::Corrupt {
                            segment: "replay".into(),
                            offset: *offset as u64,
                            reason,
                        }));
                    }
                    None => self.current = None,
                }
            }
            let segment = self.segments.next()?;
            match fs::read(&segment.path) {
                Ok(data) => self.current = Some((Bytes::from(data), 0)),
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

/// Delete every segment whose records are all at or below `durable_seq`, never the newest one.
/// Returns the bytes freed.
pub fn retire(dir: &Path, durable_seq: u64) -> io::Result<u64> {
    let mut firsts: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|s| s.parse().ok())
        })
        .collect();
    firsts.sort_unstable();
    let mut freed = 0;
    for pair in firsts.windows(2) {
        // Segment pair[0] holds pair[0]..pair[1]-1.
        if pair[1] <= durable_seq + 1 {
            let path = segment_path(dir, pair[0]);
            freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path)?;
        }
    }
    Ok(freed)
}
