//! The output read by independent readers: DuckDB and pyarrow (from pip), via `lake_check.py`.
//!
//! Python comes from `LAKE_CHECK_PYTHON`, else the workspace's `.venv`, else `python3`; it must
//! have `duckdb` and `pyarrow` (`python3 -m venv .venv && .venv/bin/pip install duckdb pyarrow`,
//! which `.ci/run` does). Without them this test fails rather than skipping the check.

use std::path::Path;
use std::process::Command;

#[test]
fn duckdb_and_pyarrow_read_the_three_tables() {
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
        .args(["-c", "import duckdb, pyarrow"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "{python} lacks duckdb/pyarrow: python3 -m venv .venv && .venv/bin/pip install duckdb pyarrow"
    );
    let out = Command::new(&python)
        .arg(manifest.join("tests/lake_check.py"))
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lake check failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
