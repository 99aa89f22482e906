"""DuckDB reads a cluster's lake as it reads a single node's: the same tables, the same columns
and types (inferred and with the documented hive_types), the same Hive partitions, the same
Parquet schema in every file, and the same rows, when both were sent the same requests.

Only what depends on which gateway received a request may differ: `received_at` (and so, for
rows partitioned by it, nothing else here: the test sends plausible timestamps).

Usage: python gateway/tests/cluster_lake_check.py SINGLE_NODE_LAKE CLUSTER_LAKE
(`gateway/tests/it/cluster.rs` builds both lakes and runs this.)
"""

import sys
from pathlib import Path

import duckdb

CHECKS = {"passed": 0, "failed": 0}
TABLES = ["assignments", "conversions", "rejected"]
# What differs between two gateways given the same request.
RECEIVER = ["received_at"]


def check(name, ok, detail=""):
    CHECKS["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))


def scan(lake, table, typed):
    types = ", hive_types = {'date': DATE, 'hour': INTEGER}" if typed else ""
    return (
        f"read_parquet('{lake}/{table}/**/*.parquet', hive_partitioning = true, "
        f"union_by_name = true{types})"
    )


def main():
    single, cluster = Path(sys.argv[1]), Path(sys.argv[2])
    con = duckdb.connect()
    for table in TABLES:
        for lake in (single, cluster):
            check(f"{lake.name} has {table}", any((lake / table).rglob("*.parquet")))
        for typed in (False, True):
            how = "documented hive_types" if typed else "inferred types"
            cols = [
                con.sql(f"DESCRIBE SELECT * FROM {scan(lake, table, typed)}").fetchall()
                for lake in (single, cluster)
            ]
            names_types = [[(c[0], c[1], c[2]) for c in d] for d in cols]
            check(
                f"{table}: the same columns, types and nullability ({how})",
                names_types[0] == names_types[1],
                f"single {names_types[0]} vs cluster {names_types[1]}",
            )
        # Every file's own schema, as DuckDB's Parquet reader sees it.
        schemas = []
        for lake in (single, cluster):
            rows = con.sql(
                f"SELECT DISTINCT name, type, converted_type, logical_type, repetition_type "
                f"FROM parquet_schema('{lake}/{table}/**/*.parquet') ORDER BY ALL"
            ).fetchall()
            schemas.append(rows)
        check(
            f"{table}: the same Parquet schema in every file",
            schemas[0] == schemas[1],
            f"{schemas[0]} vs {schemas[1]}",
        )
        folders = []
        for lake in (single, cluster):
            folders.append(
                sorted(
                    str(p.parent.relative_to(lake / table))
                    for p in (lake / table).rglob("*.parquet")
                )
            )
        check(
            f"{table}: the same Hive partitions",
            sorted(set(folders[0])) == sorted(set(folders[1])),
            f"{sorted(set(folders[0]))} vs {sorted(set(folders[1]))}",
        )
        key = "event_id, batch_index, raw" if table == "rejected" else "event_id"
        rows = []
        for lake in (single, cluster):
            rows.append(
                con.sql(
                    f"SELECT * EXCLUDE ({', '.join(RECEIVER)}) FROM {scan(lake, table, True)} "
                    f"ORDER BY {key}"
                ).fetchall()
            )
        check(
            f"{table}: the same rows ({len(rows[0])}) but for the receive time",
            len(rows[0]) > 0 and rows[0] == rows[1],
            f"{len(rows[0])} vs {len(rows[1])} rows; first difference: "
            + next(
                (f"{a} vs {b}" for a, b in zip(rows[0], rows[1]) if a != b),
                "none in the common prefix",
            ),
        )
    # The experiments each node served: the same definitions, whichever node wrote them.
    own = "node_id, first_served_at"
    defs = []
    for lake in (single, cluster):
        files = f"read_parquet('{lake}/experiments/*.parquet')"
        check(f"{lake.name} has experiments", any((lake / "experiments").glob("*.parquet")))
        defs.append(
            (
                con.sql(f"DESCRIBE SELECT * FROM {files}").fetchall(),
                con.sql(f"SELECT DISTINCT * EXCLUDE ({own}) FROM {files} ORDER BY ALL").fetchall(),
            )
        )
    check("experiments: the same columns and types", defs[0][0] == defs[1][0], f"{defs}")
    check(
        f"experiments: the same definitions ({len(defs[0][1])})",
        len(defs[0][1]) > 0 and defs[0][1] == defs[1][1],
        f"{defs[0][1]} vs {defs[1][1]}",
    )
    print(f"{CHECKS['passed']} passed, {CHECKS['failed']} failed")
    sys.exit(1 if CHECKS["failed"] else 0)


if __name__ == "__main__":
    main()
