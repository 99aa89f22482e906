//! The output read by independent readers (DuckDB, pyarrow and polars, from pip), by the Python
//! checks beside this crate's tests, each given the release gateway binary.
//!
//! Python comes from `LAKE_CHECK_PYTHON`, else the workspace's `.venv`, else `python3`; it must
//! have the packages `.ci/run` pins (duckdb, pyarrow, polars, scipy). Without them these tests
//! fail rather than skipping the check.

use std::path::Path;
use std::process::Command;

fn python_check(script: &str, modules: &str) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = manifest.join("../.venv/bin/python");
    let python = std::env::var("LAKE_CHECK_PYTHON").unwrap_or_else(|_| {
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let probe = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "{python} lacks {modules}: run the pip install line of .ci/run"
    );
    let out = Command::new(&python)
        .arg(manifest.join("tests").join(script))
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn duckdb_and_pyarrow_read_the_three_tables() {
    python_check("lake_check.py", "duckdb, pyarrow");
}

#[test]
fn every_reader_types_a_multi_day_lake_the_same() {
    python_check("lake_types_check.py", "duckdb, pyarrow, polars");
}

#[test]
fn the_readout_finds_the_truth_a_generated_lake_planted() {
    python_check("readout_check.py", "duckdb, pyarrow, scipy");
}
