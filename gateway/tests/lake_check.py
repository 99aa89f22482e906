"""Independent reader check: the gateway's Parquet output as DuckDB and pyarrow see it.

Starts the release gateway binary on port 0 with a fresh data folder, posts known events
(JSON and gzip NDJSON, with duplicates and rejections), stops it with SIGTERM (which must flush
everything), then reads the three Hive-partitioned tables with DuckDB and with pyarrow.dataset and
checks row counts, column types and values.

Usage: python gateway/tests/lake_check.py path/to/gateway-binary
"""

import gzip
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
import pyarrow as pa
import pyarrow.dataset as ds

CHECKS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    CHECKS["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))


def post(base, body, content_type, encoding=None):
    req = urllib.request.Request(base + "/v1/events", data=body, method="POST")
    req.add_header("content-type", content_type)
    if encoding:
        req.add_header("content-encoding", encoding)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def main(binary):
    work = Path(tempfile.mkdtemp())
    data, state = work / "data", work / "state"
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--storage", str(data), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = []
    port = None
    while port is None:
        line = proc.stdout.readline()
        if not line:
            sys.exit(f"gateway did not report its address: {seen!r}")
        seen.append(line)
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    base = f"http://127.0.0.1:{port.group(1)}"

    now_ms = int(time.time() * 1000)
    assignments = [
        {"event_id": f"a-{i}", "type": "assignment", "ts": now_ms - i, "user_id": f"u-{i % 7}",
         "experiment": "checkout_button", "variant": "treatment" if i % 2 else "control",
         "props": {"device": "ios", "build": i}}
        for i in range(300)
    ]
    conversions = [
        {"event_id": f"c-{i}", "type": "conversion", "ts": now_ms - i, "user_id": f"u-{i % 7}",
         "name": "purchase", "value": 1.5 * i, "experiment": "checkout_button", "variant": "control"}
        for i in range(120)
    ]
    r1 = post(base, json.dumps(assignments[:150] + [assignments[0]]).encode(), "application/json")
    ndjson = "\n".join(json.dumps(e) for e in assignments[150:] + conversions).encode()
    r2 = post(base, gzip.compress(ndjson), "application/x-ndjson", "gzip")
    bad = [{"event_id": "bad-1", "type": "assignment", "ts": now_ms, "user_id": "u"},
           {"event_id": "bad-2", "type": "conversion", "ts": "soon", "user_id": "u", "name": "n"}]
    r3 = post(base, json.dumps(bad).encode(), "application/json")
    check("responses count accepted and duplicate events",
          (r1["accepted"], r1["duplicates"], r2["accepted"], r3["accepted"], len(r3["rejected"]))
          == (150, 1, 270, 0, 2), (r1, r2, r3))

    proc.send_signal(signal.SIGTERM)
    check("gateway exits 0 on SIGTERM", proc.wait(timeout=60) == 0)

    con = duckdb.connect()
    def q(sql):
        return con.execute(sql).fetchall()
    glob = lambda t: f"read_parquet('{data}/{t}/**/*.parquet', hive_partitioning=true)"

    counts = {t: q(f"SELECT count(*) FROM {glob(t)}")[0][0] for t in ("assignments", "conversions", "rejected")}
    check("duckdb row counts", counts == {"assignments": 300, "conversions": 120, "rejected": 2}, counts)
    distinct = q(f"SELECT count(DISTINCT event_id) FROM {glob('assignments')}")[0][0]
    check("no event stored twice", distinct == 300, distinct)

    types = dict(q(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {glob('conversions')})"))
    check("duckdb sees typed columns", types.get("ts") == "TIMESTAMP WITH TIME ZONE"
          and types.get("received_at") == "TIMESTAMP WITH TIME ZONE" and types.get("value") == "DOUBLE"
          and types.get("ts_out_of_bounds") == "BOOLEAN" and types.get("name") == "VARCHAR"
          and "date" in types and "hour" in types, types)

    row = q(f"SELECT epoch_ms(ts), user_id, value, variant FROM {glob('conversions')} WHERE event_id = 'c-10'")
    check("a conversion reads back exactly", row == [(now_ms - 10, "u-3", 15.0, "control")], row)
    props = q(f"SELECT props->>'device', CAST(props->>'build' AS INTEGER) FROM {glob('assignments')} WHERE event_id = 'a-42'")
    check("props are queryable JSON", props == [("ios", 42)], props)
    day = time.strftime("%Y-%m-%d", time.gmtime(now_ms / 1000))
    parts = q(f"SELECT DISTINCT CAST(date AS VARCHAR) FROM {glob('assignments')}")
    check("hive partition columns match the event day", parts == [(day,)], parts)
    rej = q(f"SELECT code, raw FROM {glob('rejected')} ORDER BY batch_index")
    check("rejected rows keep code and raw JSON",
          [r[0] for r in rej] == ["missing_field", "invalid_value"] and '"bad-2"' in rej[1][1], rej)

    dataset = ds.dataset(data / "assignments", format="parquet", partitioning="hive")
    table = dataset.to_table()
    check("pyarrow row count", table.num_rows == 300, table.num_rows)
    schema = dataset.schema
    check("pyarrow timestamp type is microseconds UTC",
          schema.field("ts").type == pa.timestamp("us", tz="UTC"), schema.field("ts").type)
    check("pyarrow sees the partition columns", {"date", "hour"} <= set(schema.names), schema.names)
    conv = ds.dataset(data / "conversions", format="parquet", partitioning="hive").to_table()
    total = sum(v for v in conv.column("value").to_pylist())
    check("pyarrow conversion values", abs(total - sum(1.5 * i for i in range(120))) < 1e-9, total)

    print(f"{CHECKS['passed']} passed, {CHECKS['failed']} failed")
    return 1 if CHECKS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
