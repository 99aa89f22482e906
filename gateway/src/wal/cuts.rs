//! The cut journal (`{state_dir}/cuts.log`): where the log was cut into files, and how far those
//! files are known to be in object storage.
//!
//! A *cut* at sequence `H` turns every buffered row from records `prev+1..=H` into Parquet files
//! named after `H`. The uploader writes `cut H` (synced) before the first upload of the cut, and
//! `done H` after its last one. On restart, `durable` is the highest `done`; each `cut` above it is
//! *pending*: replay must cut at exactly those sequences again, so the files it re-creates have the
//! same names and the same rows as any that were already uploaded. No row is written twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// What the journal says after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutState {
    /// Every record at or below this sequence is in object storage.
    pub durable: u64,
    /// Cuts above `durable` that were started, oldest first.
    pub pending: Vec<u64>,
}

#[derive(Debug)]
pub struct CutLog {
    file: File,
}

impl CutLog {
    /// Read (and compact) the journal at `path`.
    pub fn open(path: &Path) -> io::Result<(CutLog, CutState)> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let state = parse(&text);
        // Rewrite it short: one `done`, then the pending cuts. Atomic by rename.
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            writeln!(f, "done {}", state.durable)?;
            for seq in &state.pending {
                writeln!(f, "cut {seq}")?;
            }
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok((CutLog { file }, state))
    }

    pub fn begin(&mut self, seq: u64) -> io::Result<()> {
        self.append(&format!("cut {seq}\n"))
    }

    pub fn done(&mut self, seq: u64) -> io::Result<()> {
        self.append(&format!("done {seq}\n"))
    }

    fn append(&mut self, line: &str) -> io::Result<()> {
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()
    }
}

/// Parse journal text; a last line without its newline was torn and is ignored.
fn parse(text: &str) -> CutState {
    let mut state = CutState::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for line in complete.lines() {
        let (verb, seq) = line.split_once(' ').unwrap_or((line, ""));
        let Ok(seq) = seq.trim().parse::<u64>() else {
            continue;
        };
        match verb {
            "cut" if seq > state.durable && !state.pending.contains(&seq) => {
                state.pending.push(seq)
            }
            "done" => {
                state.durable = state.durable.max(seq);
                state.pending.retain(|&p| p > state.durable);
            }
            _ => {}
        }
    }
    state.pending.sort_unstable();
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_cuts_are_those_above_the_last_done() {
        let s = parse("done 0\ncut 10\ndone 10\ncut 25\ncut 40\n");
        assert_eq!(
            s,
            CutState {
                durable: 10,
                pending: vec![25, 40]
            }
        );
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let s = parse("cut 10\ndone 10\ncut 2");
        assert_eq!(
            s,
            CutState {
                durable: 10,
                pending: vec![]
            }
        );
    }

    #[test]
    fn reopening_keeps_the_state_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cuts.log");
        {
            let (mut log, state) = CutLog::open(&path).unwrap();
            assert_eq!(state, CutState::default());
            log.begin(5).unwrap();
            log.done(5).unwrap();
            log.begin(9).unwrap();
        }
        let (_, state) = CutLog::open(&path).unwrap();
        assert_eq!(
            state,
            CutState {
                durable: 5,
                pending: vec![9]
            }
        );
        let (_, again) = CutLog::open(&path).unwrap();
        assert_eq!(again, state);
    }
}
