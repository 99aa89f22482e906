//! A run's raw samples on disk, so a later `harness compare` can judge two runs with the
//! same statistics as one: `samples.csv` (every request the harness recorded) and
//! `scrapes.csv` (every reading of the deployments' metrics), beside `summary.json`.
//!
//! Both are plain CSV with a header, times in microseconds since the run's epoch (the
//! clock of `summary.json`'s `window_us`), variants by name (`-` for a request made
//! before a variant was known).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};

use crate::profile::{Endpoint, Profile};
use crate::run::{NO_VARIANT, Record, RunData, Scrape};

pub const SAMPLES: &str = "samples.csv";
pub const SCRAPES: &str = "scrapes.csv";
const SAMPLES_HEADER: &str = "at_us,user,variant,endpoint,latency_us,lag_us,ok";
const SCRAPES_HEADER: &str = "at_us,variant,cpu_seconds,memory_bytes";

pub fn write(out_dir: &Path, profile: &Profile, data: &RunData) -> anyhow::Result<()> {
    let name = |v: u16| -> &str {
        if v == NO_VARIANT {
            "-"
        } else {
            &profile.variants[v as usize]
        }
    };
    let mut csv = String::with_capacity(48 * data.records.len() + 64);
    csv.push_str(SAMPLES_HEADER);
    csv.push('\n');
    for r in &data.records {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            r.at_us,
            r.user,
            name(r.variant),
            r.endpoint.as_str(),
            r.latency_us,
            r.lag_us,
            u8::from(r.ok)
        );
    }
    let path = out_dir.join(SAMPLES);
    std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    let mut csv = String::from(SCRAPES_HEADER);
    csv.push('\n');
    for s in &data.scrapes {
        let memory = s.memory_bytes.map_or(String::new(), |m| m.to_string());
        let _ = writeln!(
            csv,
            "{},{},{},{memory}",
            s.at_us,
            name(s.variant),
            s.cpu_seconds
        );
    }
    let path = out_dir.join(SCRAPES);
    std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))
}

/// A run's samples read back, variants as indices into `variants`.
#[derive(Debug, Clone)]
pub struct Samples {
    pub records: Vec<Record>,
    pub scrapes: Vec<Scrape>,
}

pub fn read(dir: &Path, variants: &[String]) -> anyhow::Result<Samples> {
    let index = |name: &str, path: &Path, line: usize| -> anyhow::Result<u16> {
        if name == "-" {
            return Ok(NO_VARIANT);
        }
        match variants.iter().position(|v| v == name) {
            Some(i) => Ok(i as u16),
            None => bail!(
                "{}:{line}: variant `{name}` is not in summary.json",
                path.display()
            ),
        }
    };
    let path = dir.join(SAMPLES);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (written by harness run)", path.display()))?;
    let mut records = Vec::new();
    for (line, fields) in rows(&text, SAMPLES_HEADER, &path)? {
        let [at, user, variant, endpoint, latency, lag, ok] = fields[..] else {
            bail!("{}:{line}: expected 7 fields", path.display());
        };
        let endpoint = Endpoint::ALL
            .into_iter()
            .find(|e| e.as_str() == endpoint)
            .with_context(|| format!("{}:{line}: unknown endpoint `{endpoint}`", path.display()))?;
        let number = |s: &str| -> anyhow::Result<u64> {
            s.parse()
                .with_context(|| format!("{}:{line}: `{s}` is not a number", path.display()))
        };
        records.push(Record {
            at_us: number(at)?,
            user: number(user)? as u32,
            variant: index(variant, &path, line)?,
            endpoint,
            latency_us: number(latency)?,
            lag_us: number(lag)?,
            ok: ok == "1",
        });
    }
    let path = dir.join(SCRAPES);
    let mut scrapes = Vec::new();
    // A run without a [resources] section still writes the header; an older run has none.
    if let Ok(text) = std::fs::read_to_string(&path) {
        for (line, fields) in rows(&text, SCRAPES_HEADER, &path)? {
            let [at, variant, cpu, memory] = fields[..] else {
                bail!("{}:{line}: expected 4 fields", path.display());
            };
            let float = |s: &str| -> anyhow::Result<f64> {
                s.parse()
                    .with_context(|| format!("{}:{line}: `{s}` is not a number", path.display()))
            };
            scrapes.push(Scrape {
                at_us: float(at)? as u64,
                variant: index(variant, &path, line)?,
                cpu_seconds: float(cpu)?,
                memory_bytes: if memory.is_empty() {
                    None
                } else {
                    Some(float(memory)?)
                },
            });
        }
    }
    Ok(Samples { records, scrapes })
}

/// The data lines of a CSV file with a known header, as (line number, fields).
fn rows<'a>(
    text: &'a str,
    header: &str,
    path: &Path,
) -> anyhow::Result<impl Iterator<Item = (usize, Vec<&'a str>)>> {
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        bail!("{} does not start with `{header}`", path.display());
    }
    Ok(lines
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| (i + 2, l.split(',').collect())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip() {
        let profile = Profile::parse(
            r#"
            [gateway]
            url = "http://127.0.0.1:8080"
            [experiment]
            key = "e"
            weights = { control = 0.5, treatment = 0.5 }
            [target]
            url = "http://127.0.0.1:8090"
            [load]
            users = 1
            rate = 1
            "#,
            "p",
        )
        .unwrap();
        let collector = crate::run::Collector::new(2);
        let rec = |at_us, variant, endpoint, ok| Record {
            at_us,
            user: 3,
            variant,
            endpoint,
            latency_us: 1_234,
            lag_us: 5,
            ok,
        };
        collector.record(rec(10, 1, Endpoint::Target, true));
        collector.record(rec(20, NO_VARIANT, Endpoint::Assign, false));
        collector.scraped(Scrape {
            variant: 0,
            at_us: 7,
            cpu_seconds: 1.25,
            memory_bytes: Some(1e7),
        });
        collector.scraped(Scrape {
            variant: 1,
            at_us: 8,
            cpu_seconds: 0.5,
            memory_bytes: None,
        });
        let data = collector.finish("r".into(), false, 1.0, None);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &profile, &data).unwrap();
        let back = read(dir.path(), &profile.variants).unwrap();
        assert_eq!(back.records, data.records);
        assert_eq!(back.scrapes, data.scrapes);
        // A variant the summary does not know is an error, not a silent drop.
        let err = read(dir.path(), &["control".to_string()]).unwrap_err();
        assert!(err.to_string().contains("treatment"), "{err}");
    }
}
