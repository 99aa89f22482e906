"""Experiment readout over the gateway's lake: conversion rate and revenue per exposed unit by
variant, differences to control with intervals and Holm-corrected p-values, and a sample-ratio
mismatch (SRM) test against the weights the units were drawn with.

    python analysis/readout.py --lake data --conversion purchase [--experiment KEY] [--json]
        [--alpha 0.05] [--window-end 2026-12-01T00:00:00Z] [--conversion-window-hours 72]

The counting is one SQL query (analysis/readout.sql) over the relations `assignments`,
`conversions`, `experiments` and `readout_params`; this file registers them in DuckDB and
turns the sufficient statistics into estimates. docs/analysis.md explains every number.
"""

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

import duckdb
from scipy import stats

HERE = Path(__file__).resolve().parent
SRM_THRESHOLD = 0.001

# Every column the query reads, with its type. A column that no file has yet (a lake written
# before it existed) reads as null; a table with no files at all is an empty relation.
COLUMNS = {
    "assignments": {
        "event_id": "VARCHAR", "ts": "TIMESTAMPTZ", "received_at": "TIMESTAMPTZ",
        "user_id": "VARCHAR", "experiment": "VARCHAR", "variant": "VARCHAR",
        "unit_attribute": "VARCHAR", "unit_id": "VARCHAR", "config_version": "VARCHAR",
        "synthetic": "BOOLEAN",
    },
    "conversions": {
        "event_id": "VARCHAR", "ts": "TIMESTAMPTZ", "received_at": "TIMESTAMPTZ",
        "user_id": "VARCHAR", "name": "VARCHAR", "value": "DOUBLE", "synthetic": "BOOLEAN",
    },
    "experiments": {
        "config_version": "VARCHAR", "experiment": "VARCHAR", "variant": "VARCHAR",
        "variant_index": "INTEGER", "weight": "DOUBLE", "coverage": "DOUBLE",
        "status": "VARCHAR", "layer": "VARCHAR", "hash_attribute": "VARCHAR",
        "first_served_at": "TIMESTAMPTZ", "node_id": "VARCHAR",
    },
}


def sql_string(s):
    return "'" + str(s).replace("'", "''") + "'"


def source(lake, table):
    """The read_parquet call for one table of the lake (a local folder or an object-store URL)."""
    root = str(lake).rstrip("/")
    if table == "experiments":  # flat folder, one file per (config version, node)
        return f"read_parquet({sql_string(root + '/experiments/*.parquet')}, union_by_name = true)"
    # hour is unpadded in new files (hour=7) and padded in old ones (hour=07): read it as a number.
    return (f"read_parquet({sql_string(root + '/' + table + '/**/*.parquet')}, "
            "hive_partitioning = true, union_by_name = true, "
            "hive_types = {'date': DATE, 'hour': INTEGER})")


def register(con, lake):
    """Create the views assignments, conversions and experiments over the lake."""
    for table, columns in COLUMNS.items():
        try:
            present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source(lake, table)}").fetchall()}
            origin = source(lake, table)
        except duckdb.IOException as e:
            if "No files found" not in str(e):
                raise
            present, origin = set(), None
        select = ", ".join(
            (f'CAST("{c}" AS {t}) AS "{c}"' if c in present else f'CAST(NULL AS {t}) AS "{c}"')
            for c, t in columns.items())
        if origin is None:
            con.execute(f"CREATE VIEW {table} AS SELECT {select} WHERE FALSE")
        else:
            con.execute(f"CREATE VIEW {table} AS SELECT {select} FROM {origin}")


def run_query(lake, conversion, experiment=None, window_end=None, conversion_window=None,
              sql_file=HERE / "readout.sql"):
    """The query's rows, as dicts."""
    con = duckdb.connect()
    register(con, lake)
    con.execute("CREATE TABLE readout_params (conversion_name VARCHAR, experiment VARCHAR, "
                "window_end TIMESTAMPTZ, conversion_window INTERVAL)")
    con.execute("INSERT INTO readout_params VALUES (?, ?, ?, ?)",
                [conversion, experiment, window_end, conversion_window])
    cur = con.execute(Path(sql_file).read_text())
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


# ---- statistics ----------------------------------------------------------------------------

def wilson(x, n, z):
    """Wilson score interval for a proportion x/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = x / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(x1, n1, x0, n0, z):
    """Newcombe's hybrid score interval (method 10) for p1 - p0, from the two Wilson intervals."""
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson(x1, n1, z)
    l0, u0 = wilson(x0, n0, z)
    d = p1 - p0
    return (d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2))


def two_sided(zstat):
    return float(2 * stats.norm.sf(abs(zstat)))


def relative(m1, se1, m0, se0, z):
    """m1/m0 - 1 with its delta-method interval (independent groups)."""
    if m0 == 0:
        return (math.nan, (math.nan, math.nan))
    r = m1 / m0
    se = math.sqrt(se1 ** 2 / m0 ** 2 + (r ** 2) * se0 ** 2 / m0 ** 2)
    return (r - 1, (r - 1 - z * se, r - 1 + z * se))


def holm(pvalues):
    """Holm's step-down adjustment; NaNs are left out and stay NaN."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def srm(variants):
    """Chi-square goodness of fit of the units per variant to the expected units."""
    if all(v["expected_units"] is None for v in variants):
        return {"available": False, "reason": "no weights: the experiment is not in the experiments table"}
    cells = [(v["units"], v["expected_units"] or 0.0) for v in variants]
    total = sum(o for o, _ in cells)
    if total == 0:
        return {"available": False, "reason": "no exposed units"}
    if any(o > 0 and e == 0 for o, e in cells):
        return {"available": True, "chi2": math.inf, "df": len(cells) - 1, "p_value": 0.0,
                "flagged": True, "reason": "units in a variant with weight 0 or not configured"}
    live = [(o, e) for o, e in cells if e > 0]
    chi2 = sum((o - e) ** 2 / e for o, e in live)
    df = len(live) - 1
    p = float(stats.chi2.sf(chi2, df)) if df > 0 else 1.0
    return {"available": True, "chi2": chi2, "df": df, "p_value": p, "flagged": p < SRM_THRESHOLD}


def pick_control(variants):
    indexed = [v for v in variants if v["variant_index"] is not None]
    if indexed:
        return min(indexed, key=lambda v: v["variant_index"])["variant"]
    names = [v["variant"] for v in variants]
    return "control" if "control" in names else sorted(names)[0]


def analyse(rows, alpha):
    """Estimates per experiment from the query's rows."""
    z = float(stats.norm.ppf(1 - alpha / 2))
    by_experiment = {}
    for r in rows:
        by_experiment.setdefault(r["experiment"], []).append(r)
    report = []
    for name, rs in by_experiment.items():
        control = pick_control(rs)
        variants = []
        for r in rs:
            n, x = r["units"], r["converting_units"]
            s, ss = float(r["revenue_sum"]), float(r["revenue_sum_squares"])
            mean = s / n if n else math.nan
            var = max(0.0, (ss - s * s / n) / (n - 1)) if n > 1 else math.nan
            se = math.sqrt(var / n) if n > 1 else math.nan
            variants.append({
                "variant": r["variant"], "variant_index": r["variant_index"],
                "is_control": r["variant"] == control,
                "units": n, "expected_units": r["expected_units"],
                "expected_share": r["expected_share"],
                "converting_units": x,
                "conversion_rate": x / n if n else math.nan,
                "conversion_rate_ci": list(wilson(x, n, z)),
                "revenue_sum": s, "revenue_sum_squares": ss,
                "revenue_per_unit": mean, "revenue_per_unit_se": se,
                "revenue_per_unit_ci": [mean - z * se, mean + z * se],
                "excluded": {k: r[k] for k in (
                    "multi_variant_units", "duplicate_exposure_rows",
                    "synthetic_exposure_rows", "wrong_unit_exposure_rows")},
                "units_without_user": r["units_without_user"],
                "conversions_before_exposure": r["conversions_before_exposure"],
            })
        total = sum(v["units"] for v in variants)
        for v in variants:
            v["observed_share"] = v["units"] / total if total else math.nan
        compare(variants, z)
        report.append({
            "experiment": name, "hash_attribute": rs[0]["hash_attribute"],
            "status": rs[0]["status"], "latest_config_version": rs[0]["latest_config_version"],
            "control": control, "units": total, "srm": srm(variants),
            "conversions_excluded": {
                "duplicate_rows": rs[0]["duplicate_conversion_rows"],
                "synthetic_rows": rs[0]["synthetic_conversion_rows"]},
            "variants": variants,
        })
    return report


def compare(variants, z):
    """Fill in each treatment's differences to control, then Holm-correct per metric."""
    c = next(v for v in variants if v["is_control"])
    treatments = [v for v in variants if not v["is_control"]]
    for v in treatments:
        n1, x1, n0, x0 = v["units"], v["converting_units"], c["units"], c["converting_units"]
        conv = {"diff": math.nan, "diff_ci": [math.nan, math.nan], "rel_diff": math.nan,
                "rel_diff_ci": [math.nan, math.nan], "p_value": math.nan}
        rev = dict(conv)
        if n1 > 1 and n0 > 1:
            p1, p0 = x1 / n1, x0 / n0
            conv["diff"], conv["diff_ci"] = p1 - p0, list(newcombe(x1, n1, x0, n0, z))
            pooled = (x1 + x0) / (n1 + n0)
            se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
            conv["p_value"] = two_sided((p1 - p0) / se_pooled) if se_pooled > 0 else 1.0
            rel, rel_ci = relative(p1, math.sqrt(p1 * (1 - p1) / n1),
                                   p0, math.sqrt(p0 * (1 - p0) / n0), z)
            conv["rel_diff"], conv["rel_diff_ci"] = rel, list(rel_ci)

            m1, se1 = v["revenue_per_unit"], v["revenue_per_unit_se"]
            m0, se0 = c["revenue_per_unit"], c["revenue_per_unit_se"]
            se_d = math.sqrt(se1 ** 2 + se0 ** 2)
            rev["diff"] = m1 - m0
            rev["diff_ci"] = [m1 - m0 - z * se_d, m1 - m0 + z * se_d]
            rev["p_value"] = two_sided((m1 - m0) / se_d) if se_d > 0 else 1.0
            rel, rel_ci = relative(m1, se1, m0, se0, z)
            rev["rel_diff"], rev["rel_diff_ci"] = rel, list(rel_ci)
        v["conversion_vs_control"], v["revenue_vs_control"] = conv, rev
    for metric in ("conversion_vs_control", "revenue_vs_control"):
        for v, p in zip(treatments, holm([v[metric]["p_value"] for v in treatments])):
            v[metric]["p_holm"] = p


# ---- output ----------------------------------------------------------------------------------

def finite(x):
    """JSON has no NaN or infinity: null instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


def pct(x, digits=2):
    return "-" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}%"


def num(x, digits=2):
    return "-" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def interval(ci, fmt):
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def pvalue(p):
    return "-" if p is None or math.isnan(p) else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  " + "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                          for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join(line(r).rstrip() for r in [header] + rows)


def render(report, conversion, alpha):
    level = f"{100 * (1 - alpha):g}%"
    out = []
    for e in report:
        out.append(f"experiment {e['experiment']}  (unit {e['hash_attribute'] or '?'}, "
                   f"status {e['status'] or '?'}, control {e['control']}, "
                   f"conversion {conversion!r}, {level} intervals)")
        s = e["srm"]
        if not s["available"]:
            out.append(f"  SRM: not tested ({s['reason']})")
        else:
            verdict = "MISMATCH: do not trust this experiment's results" if s["flagged"] else "ok"
            out.append(f"  SRM: chi2 {num(s['chi2'])} on {s['df']} df, p {pvalue(s['p_value'])}"
                       f" ({verdict}; flagged below p {SRM_THRESHOLD})"
                       + (f": {s['reason']}" if "reason" in s else ""))
        rows = []
        for v in e["variants"]:
            c = v.get("conversion_vs_control")
            rows.append([
                v["variant"], v["units"], pct(v["expected_share"], 1), pct(v["observed_share"], 1),
                v["converting_units"],
                f"{pct(v['conversion_rate'])} {interval(v['conversion_rate_ci'], pct)}",
                "" if c is None else f"{pct(c['diff'])} {interval(c['diff_ci'], pct)}",
                "" if c is None else f"{pct(c['rel_diff'], 1)} {interval(c['rel_diff_ci'], lambda x: pct(x, 1))}",
                "" if c is None else pvalue(c["p_holm"]),
            ])
        out.append(table(["variant", "units", "expected", "observed", "converting", "rate [CI]",
                          "diff vs control [CI]", "relative [CI]", "p (Holm)"], rows))
        rows = []
        for v in e["variants"]:
            r = v.get("revenue_vs_control")
            rows.append([
                v["variant"],
                f"{num(v['revenue_per_unit'], 3)} {interval(v['revenue_per_unit_ci'], lambda x: num(x, 3))}",
                "" if r is None else f"{num(r['diff'], 3)} {interval(r['diff_ci'], lambda x: num(x, 3))}",
                "" if r is None else f"{pct(r['rel_diff'], 1)} {interval(r['rel_diff_ci'], lambda x: pct(x, 1))}",
                "" if r is None else pvalue(r["p_holm"]),
            ])
        out.append(table(["variant", "revenue/unit [CI]", "diff vs control [CI]",
                          "relative [CI]", "p (Holm)"], rows))
        ex = {k: sum(v["excluded"][k] for v in e["variants"]) for k in e["variants"][0]["excluded"]}
        out.append(f"  excluded: {ex['multi_variant_units']} units seen in several variants; "
                   f"exposure rows: {ex['duplicate_exposure_rows']} repeated event ids, "
                   f"{ex['synthetic_exposure_rows']} synthetic, "
                   f"{ex['wrong_unit_exposure_rows']} keyed by another unit than "
                   f"{e['hash_attribute'] or 'the hash attribute'}")
        out.append(f"  ignored: {sum(v['conversions_before_exposure'] for v in e['variants'])} "
                   f"conversions before the unit's first exposure; "
                   f"{sum(v['units_without_user'] for v in e['variants'])} units with no known "
                   f"user (counted as not converting)")
        out.append(f"  {conversion!r} rows, all experiments: "
                   f"{e['conversions_excluded']['duplicate_rows']} repeated event ids, "
                   f"{e['conversions_excluded']['synthetic_rows']} synthetic")
        out.append("")
    if not report:
        out.append("no exposures found")
    return "\n".join(out)


def timestamp(s):
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lake", default="data", help="storage root (default: data)")
    ap.add_argument("--conversion", required=True, help="conversion name, e.g. purchase")
    ap.add_argument("--experiment", help="only this experiment (default: all)")
    ap.add_argument("--alpha", type=float, default=0.05, help="1 - interval level (default 0.05)")
    ap.add_argument("--window-end", type=timestamp,
                    help="end of the analysis period (RFC 3339): ignore events with a later ts")
    ap.add_argument("--conversion-window-hours", type=float,
                    help="count a conversion only this long after the unit's first exposure")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--sql", default=HERE / "readout.sql",
                    help="run this query file instead of analysis/readout.sql")
    args = ap.parse_args(argv)
    if not 0 < args.alpha < 1:
        ap.error("--alpha must be between 0 and 1")
    window = (dt.timedelta(hours=args.conversion_window_hours)
              if args.conversion_window_hours is not None else None)
    rows = run_query(args.lake, args.conversion, args.experiment, args.window_end, window, args.sql)
    report = analyse(rows, args.alpha)
    if args.json:
        print(json.dumps(finite({"conversion": args.conversion, "alpha": args.alpha,
                                 "experiments": report}), indent=2, default=str))
    else:
        print(render(report, args.conversion, args.alpha))
    return 0


if __name__ == "__main__":
    sys.exit(main())
