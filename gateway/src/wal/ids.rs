//! Id sidecars: the dedup keys of each segment's fresh events, kept after the segment itself is
//! retired so the dedup window survives restarts without keeping whole request bodies on disk.
//!
//! `{first_seq:020}.ids` beside `{first_seq:020}.wal`, a sequence of entries
//! `received_ms: i64 LE | count: u32 LE | count x key: u128 LE`. Written after each group commit
//! (flushed to the OS, so a killed process loses nothing) and synced when its segment rolls,
//! which happens before the segment can be retired. A torn last entry is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::dedup::EventKey;

const SUFFIX: &str = ".ids";

pub fn ids_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

pub struct IdsWriter {
    out: BufWriter<File>,
}

impl IdsWriter {
    pub fn open(dir: &Path, first_seq: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ids_path(dir, first_seq))?;
        Ok(Self {
            out: BufWriter::with_capacity(64 << 10, file),
        })
    }

    pub fn append(&mut self, received_ms: i64, keys: &[EventKey]) -> io::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.out.write_all(&received_ms.to_le_bytes())?;
        self.out.write_all(&(keys.len() as u32).to_le_bytes())?;
        for k in keys {
            self.out.write_all(&k.to_le_bytes())?;
        }
        Ok(())
    }

    /// Hand buffered entries to the OS (no sync).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}

/// Entries `(received_ms, keys)` of one sidecar image.
pub fn parse(data: &[u8]) -> Vec<(i64, Vec<EventKey>)> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 12 {
        let received = i64::from_le_bytes(rest[0..8].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        let need = 12 + n * 16;
        if rest.len() < need {
            break;
        }
        let keys = rest[12..need]
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect();
        out.push((received, keys));
        rest = &rest[need..];
    }
    out
}

/// Every sidecar in `dir`, oldest first.
pub fn sidecars(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.to_str().is_some_and(|n| n.ends_with(SUFFIX)) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn retired_sidecars(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(sidecars(dir)?
        .into_iter()
        .filter(|p| !p.with_extension("wal").exists())
        .collect())
}

/// Delete sidecars of retired segments not written to for `keep`: their ids left the window.
pub fn expire(dir: &Path, keep: Duration) -> io::Result<()> {
    let now = SystemTime::now();
    for p in retired_sidecars(dir)? {
        let age = fs::metadata(&p)?
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok());
        if age.is_some_and(|a| a > keep) {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = IdsWriter::open(dir.path(), 1).unwrap();
        w.append(10, &[1, 2]).unwrap();
        w.append(20, &[]).unwrap();
        w.append(30, &[u128::MAX]).unwrap();
        w.sync().unwrap();
        let data = fs::read(ids_path(dir.path(), 1)).unwrap();
        assert_eq!(parse(&data), vec![(10, vec![1, 2]), (30, vec![u128::MAX])]);
        assert_eq!(parse(&data[..data.len() - 1]), vec![(10, vec![1, 2])]);
    }
}
