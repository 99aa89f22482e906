//! The output read by independent readers (DuckDB, pyarrow and polars, from pip), by the Python
//! checks beside this crate's tests, each given the release gateway binary.
//!
//! Python comes from `LAKE_CHECK_PYTHON`, else the workspace's `.venv`, else `python3`; it must
//! have the packages `.ci/run` pins (duckdb, pyarrow, polars, scipy). Without them these tests
//! fail rather than skipping the check.

use crate::common::python_check;

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
