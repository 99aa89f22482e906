"""Reader check on a multi-day lake: the same column and partition types in DuckDB, pyarrow and
polars, whatever hours the lake holds.

Starts the release gateway binary with a fresh data folder, posts events spread over every hour
of the last three days (client-posted exposures with and without unit fields, gateway-logged
exposures through /v1/assign, conversions, synthetic traffic), stops it with SIGTERM, adds one
file in the layout of the release before the unit columns (a zero-padded `hour=07` folder and no
new columns), then reads the lake with each reader as docs/data-layout.md says to.

Usage: python gateway/tests/lake_types_check.py path/to/gateway-binary
"""

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

CHECKS = {"passed": 0, "failed": 0}
HOURS = 72


def check(name, ok, detail=""):
    CHECKS["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))


def request(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def start(binary, data, state):
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--storage", str(data), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = []
    while True:
        line = proc.stdout.readline()
        if not line:
            sys.exit(f"gateway did not report its address: {seen!r}")
        seen.append(line)
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if port:
            return proc, f"http://127.0.0.1:{port.group(1)}"


def traffic(now_ms):
    """Per hour of the last three days: exposures with and without a unit, a conversion, and a
    synthetic exposure. Returns the events and how many land in hours 0-9."""
    events, early = [], 0
    hour_ms = 3_600_000
    top = now_ms - now_ms % hour_ms
    for h in range(HOURS):
        ts = top - h * hour_ms + 1234
        events += [
            {"event_id": f"a-{h}", "type": "assignment", "ts": ts, "user_id": f"u-{h}",
             "experiment": "checkout_button", "variant": "control"},
            {"event_id": f"d-{h}", "type": "assignment", "ts": ts, "user_id": f"u-{h}",
             "unit_attribute": "device_id", "unit_id": f"dev-{h}", "config_version": "feedfacefeedface",
             "experiment": "checkout_button", "variant": "treatment"},
            {"event_id": f"s-{h}", "type": "assignment", "ts": ts, "unit_attribute": "device_id",
             "unit_id": f"bot-{h}", "experiment": "checkout_button", "variant": "control",
             "synthetic": True},
            {"event_id": f"c-{h}", "type": "conversion", "ts": ts + 1, "user_id": f"u-{h}",
             "name": "purchase", "value": 2.5},
        ]
        if time.gmtime(ts / 1000).tm_hour < 10:
            early += 1
    return events, early


def old_release_file(data):
    """A file as the release before the unit columns wrote it: `hour=07`, no new columns."""
    folder = data / "assignments" / "date=2026-01-05" / "hour=07"
    folder.mkdir(parents=True)
    ts = pa.array([1767596400000000], pa.timestamp("us", tz="UTC"))
    table = pa.table({
        "event_id": ["old-1"], "ts": ts, "received_at": ts, "ts_out_of_bounds": [False],
        "user_id": ["u-old"], "experiment": ["checkout_button"], "variant": ["control"],
        "props": pa.array([None], pa.string()), "source": pa.array([None], pa.string()),
    })
    pq.write_table(table, folder / "part-0000000000000000-00000000000000000001.parquet")


def main(binary):
    work = Path(tempfile.mkdtemp())
    data, state = work / "data", work / "state"
    proc, base = start(binary, data, state)
    now_ms = int(time.time() * 1000)
    events, early = traffic(now_ms)
    answer = request(base, "/v1/events", events)
    check("every event accepted", answer["accepted"] == len(events) and not answer["rejected"], answer)
    assigned = request(base, "/v1/assign", {"user_id": "u-live", "attributes": {"device_id": "dev-live"},
                                             "experiments": ["checkout_button"], "log_exposure": True})
    version = assigned["config_version"]
    check("gateway logs the exposure", assigned.get("exposures_logged") == 1, assigned)
    proc.send_signal(signal.SIGTERM)
    check("gateway exits 0 on SIGTERM", proc.wait(timeout=60) == 0)

    # --- DuckDB, as it infers partition types on its own
    con = duckdb.connect()
    q = lambda sql: con.execute(sql).fetchall()
    auto = lambda t: f"read_parquet('{data}/{t}/**/*.parquet', hive_partitioning=true)"
    for table in ("assignments", "conversions"):
        types = dict(q(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {auto(table)})"))
        check(f"duckdb infers hour as an integer and date as a date ({table})",
              (types["hour"], types["date"]) == ("BIGINT", "DATE"), types)
    n = q(f"SELECT count(*) FROM {auto('conversions')} WHERE hour < 10")[0][0]
    check("WHERE hour < 10 works and counts the early hours", n == early, (n, early))
    hours = q(f"SELECT count(DISTINCT hour), count(DISTINCT date), count(DISTINCT (date, hour)) FROM {auto('conversions')}")[0]
    check("the lake spans all 24 hours of several days", hours[0] == 24 and hours[1] >= 3 and hours[2] == HOURS, hours)

    # Now the old-release file joins the lake: the documented reading still types it the same.
    old_release_file(data)
    documented = lambda t: (f"read_parquet('{data}/{t}/**/*.parquet', hive_partitioning=true, "
                            f"union_by_name=true, hive_types={{'date': DATE, 'hour': INTEGER}})")
    types = dict(q(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {documented('assignments')})"))
    expected = {"date": "DATE", "hour": "INTEGER", "unit_attribute": "VARCHAR", "unit_id": "VARCHAR",
                "config_version": "VARCHAR", "synthetic": "BOOLEAN", "user_id": "VARCHAR"}
    check("duckdb (documented) types every new column and the partitions",
          {k: types.get(k) for k in expected} == expected, types)
    old = q(f"SELECT hour, coalesce(unit_id, user_id), coalesce(unit_attribute, 'user_id'), synthetic "
            f"FROM {documented('assignments')} WHERE event_id = 'old-1'")
    check("an old-release file reads with hour 7 and its unit as the user",
          old == [(7, "u-old", "user_id", None)], old)
    rows = dict((r[0], r[1:]) for r in q(
        f"SELECT event_id, user_id, unit_attribute, unit_id, config_version, synthetic "
        f"FROM {documented('assignments')} WHERE event_id IN ('a-0', 'd-0', 's-0')"))
    check("client exposures keep unit and user apart", rows == {
        "a-0": ("u-0", "user_id", "u-0", None, False),
        "d-0": ("u-0", "device_id", "dev-0", "feedfacefeedface", False),
        "s-0": (None, "device_id", "bot-0", None, True)}, rows)
    logged = q(f"SELECT user_id, unit_attribute, unit_id, config_version FROM {documented('assignments')} "
               f"WHERE unit_id = 'u-live'")
    check("gateway exposures carry user, unit and config_version",
          logged == [("u-live", "user_id", "u-live", version)], logged)

    # --- The experiments table: the served version, its weights.
    exp = f"read_parquet('{data}/experiments/*.parquet')"
    served = q(f"SELECT DISTINCT config_version FROM {exp}")
    check("the experiments table holds the served config version", served == [(version,)], served)
    weights = q(f"SELECT experiment, round(sum(weight), 9), count(*) FROM {exp} GROUP BY 1 ORDER BY 1")
    check("weights are normalized per experiment", all(w == 1.0 for _, w, _ in weights) and
          ("checkout_button", 1.0, 2) in weights, weights)
    joined = q(f"SELECT a.variant, e.weight FROM {documented('assignments')} a JOIN {exp} e "
               f"ON a.config_version = e.config_version AND a.experiment = e.experiment "
               f"AND a.variant = e.variant WHERE a.unit_id = 'u-live'")
    check("exposures join to the weights they were drawn with", len(joined) == 1 and joined[0][1] == 0.5, joined)

    # --- pyarrow and polars read the lake as written by this release (the old file aside).
    (data / "assignments" / "date=2026-01-05").rename(work / "old-release")
    part_schema = pa.schema([("date", pa.date32()), ("hour", pa.int32())])
    for table in ("assignments", "conversions"):
        auto_ds = ds.dataset(data / table, format="parquet", partitioning="hive")
        check(f"pyarrow infers hour as an integer ({table})",
              pa.types.is_integer(auto_ds.schema.field("hour").type), auto_ds.schema)
        arrow = ds.dataset(data / table, format="parquet",
                           partitioning=ds.partitioning(part_schema, flavor="hive")).to_table()
        polars = pl.scan_parquet(f"{data}/{table}/**/*.parquet", hive_partitioning=True,
                                 hive_schema={"date": pl.Date, "hour": pl.Int32}).collect()
        duck = con.sql(f"SELECT * FROM {documented(table)}").to_arrow_table()
        polars_auto = pl.scan_parquet(f"{data}/{table}/**/*.parquet", hive_partitioning=True).collect()
        check(f"polars infers hour as an integer ({table})", polars_auto.schema["hour"].is_integer(),
              polars_auto.schema)
        types = {
            "duckdb": {f.name: f.type for f in duck.schema},
            "pyarrow": {f.name: f.type for f in arrow.schema},
            "polars": {f.name: f.type for f in polars.to_arrow().schema},
        }
        # Strings may come as string or large_string/string_view depending on the reader's
        # defaults, and DuckDB names UTC by its session zone, Etc/UTC: one logical type each.
        def norm(t):
            if t in (pa.string(), pa.large_string(), pa.string_view()):
                return "string"
            if pa.types.is_timestamp(t) and t.tz in ("UTC", "Etc/UTC"):
                return f"timestamp[{t.unit}, UTC]"
            return str(t)
        logical = {r: {k: norm(v) for k, v in cols.items()} for r, cols in types.items()}
        check(f"duckdb, pyarrow and polars agree on every column type ({table})",
              logical["duckdb"] == logical["pyarrow"] == logical["polars"], logical)
        check(f"partitions are date32 and int32 in every reader ({table})",
              all((c["date"], c["hour"]) == ("date32[day]", "int32") for c in logical.values()), logical)
        check(f"every reader sees every row ({table})",
              arrow.num_rows == polars.height == duck.num_rows ==
              (len(events) - HOURS + 1 if table == "assignments" else HOURS),
              (arrow.num_rows, polars.height, duck.num_rows))

    print(f"{CHECKS['passed']} passed, {CHECKS['failed']} failed")
    sys.exit(1 if CHECKS["failed"] else 0)


if __name__ == "__main__":
    main(sys.argv[1])
