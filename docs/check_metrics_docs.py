#!/usr/bin/env python3
"""Check that docs/metrics.md and docs/grafana-dashboard.json match gateway/src/metrics.rs.

    python3 docs/check_metrics_docs.py

Fails (exit 1) when:
  - a metric name constant (`pub const X: &str = "name";`) in gateway/src/metrics.rs is not
    documented in docs/metrics.md (as a `### \\`name\\`` heading);
  - docs/metrics.md states a type (counter, gauge, histogram) other than the one the code uses;
  - docs/metrics.md, docs/operations.md or an `expr` / variable query of
    docs/grafana-dashboard.json names a `gateway_*` metric that is not a constant
    (`_bucket`, `_sum`, `_count` are accepted after the name of a histogram only);
  - a selector or grouping (`by`, `on`, ...) in the dashboard, the alert rules of
    docs/metrics.md or its inline PromQL uses a label the code never sets on that metric (`le`
    passes on histograms, `instance` and `job` always);
  - docs/grafana-dashboard.json is not valid JSON.
Prints warnings (not failures) for constants without a describe_*! (no HELP text).

Standard library only; paths are relative to the repository root, wherever it is run from.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "gateway" / "src"
METRICS_RS = SRC / "metrics.rs"
DOC = ROOT / "docs" / "metrics.md"
OPERATIONS = ROOT / "docs" / "operations.md"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])(gateway_[a-z0-9_]+)")


def constants(text):
    """{CONST: "metric_name"} of every `pub const X: &str = "...";`."""
    return dict(re.findall(r'pub\s+const\s+([A-Z0-9_]+)\s*:\s*&str\s*=\s*"([^"]+)"\s*;', text))


def code_facts(consts):
    """Types and label names the code uses, per constant, from every .rs file under gateway/src.

    Types come from describe_*!(CONST, ...) and from counter!/gauge!/histogram!(CONST, ...)
    calls; labels from the `"label" =>` pairs of those calls.
    """
    types, labels, described = {}, {}, set()
    call = re.compile(
        r"\b(describe_counter|describe_gauge|describe_histogram|counter|gauge|histogram)!\s*\(\s*"
        r"(?:crate::metrics::)?([A-Z0-9_]+)\b([^;]*)",  # to the end of the statement
        re.S,
    )
    for path in sorted(SRC.rglob("*.rs")):
        text = path.read_text(encoding="utf-8")
        for macro, const, rest in call.findall(text):
            if const not in consts:
                continue
            kind = macro.removeprefix("describe_")
            if macro.startswith("describe_"):
                described.add(const)
            types.setdefault(const, set()).add(kind)
            if not macro.startswith("describe_") and rest:
                labels.setdefault(const, set()).update(re.findall(r'"([a-z_][a-z0-9_]*)"\s*=>', rest))
            else:
                labels.setdefault(const, set())
    # `for name in [A, B, ...] { counter!(name)... }` in register(): counters or gauges by list.
    text = METRICS_RS.read_text(encoding="utf-8")
    for block, macro in re.findall(r"for\s+name\s+in\s+\[([^\]]*)\]\s*\{\s*(counter|gauge|histogram)!", text):
        for const in re.findall(r"[A-Z0-9_]+", block):
            if const in consts:
                types.setdefault(const, set()).add(macro)
                labels.setdefault(const, set())
    return types, labels, described


def strip_histogram_suffix(name, histograms):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)], suffix
    return name, ""


def dashboard_queries(dash):
    """(where, query) of every panel target expr (rows' nested panels too) and variable query."""
    out = []

    def walk(panels):
        for p in panels or []:
            for t in p.get("targets") or []:
                if isinstance(t, dict) and "expr" in t:
                    out.append((f"panel {p.get('title')!r} target {t.get('refId')}", t["expr"]))
            walk(p.get("panels"))

    walk(dash.get("panels"))
    for v in (dash.get("templating") or {}).get("list") or []:
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and v.get("type") == "query":
            out.append((f"variable {v.get('name')!r}", q))
        if v.get("definition"):
            out.append((f"variable {v.get('name')!r} definition", v["definition"]))
    return out


def selector_labels(expr):
    """(metric, [label names]) of every `metric{...}` selector in a PromQL expression."""
    found = []
    for m in re.finditer(r"(gateway_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2))
        found.append((m.group(1), names))
    return found


def grouping_labels(expr):
    """Label names in `by (...)` / `without (...)` / `on (...)` / `ignoring (...)` clauses."""
    names = []
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        names += re.findall(r"[A-Za-z_][A-Za-z0-9_]*", m.group(1))
    return names


def main():
    errors, warnings = [], []
    consts = constants(METRICS_RS.read_text(encoding="utf-8"))
    if not consts:
        print(f"no metric constants found in {METRICS_RS}", file=sys.stderr)
        return 1
    names = {v: k for k, v in consts.items()}
    types, labels, described = code_facts(consts)
    histograms = {consts[c] for c, t in types.items() if "histogram" in t}

    for const, kinds in sorted(types.items()):
        if len(kinds) > 1:
            errors.append(f"metrics.rs: {const} is used as {' and '.join(sorted(kinds))}")
    for const in sorted(consts):
        if const not in described:
            warnings.append(f"{consts[const]} ({const}) has no describe_*! call: no HELP text")

    # (b) every constant documented, with the code's type; no unknown names in the docs.
    doc = DOC.read_text(encoding="utf-8")
    headings = dict(re.findall(r"^###\s+`([a-z0-9_]+)`\s*\n+\s*(\S+)", doc, re.M))
    for name, const in sorted(names.items()):
        if name not in headings:
            errors.append(f"docs/metrics.md: {name} ({const}) is not documented (### `{name}`)")
            continue
        doc_type = headings[name]
        code_types = types.get(const)
        if code_types and doc_type not in code_types:
            errors.append(
                f"docs/metrics.md: {name} documented as {doc_type}, the code uses {'/'.join(sorted(code_types))}"
            )
    for name in sorted(headings):
        if name not in names:
            errors.append(f"docs/metrics.md: section for {name}, which is not a constant in metrics.rs")
    for path in (DOC, OPERATIONS):
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for raw in NAME_RE.findall(line):
                base, _ = strip_histogram_suffix(raw, histograms)
                if base not in names:
                    errors.append(f"{rel}:{lineno}: unknown metric {raw}")

    def check_query(where, expr):
        used = set()
        for raw in NAME_RE.findall(expr):
            base, _ = strip_histogram_suffix(raw, histograms)
            if base not in names:
                errors.append(f"{where}: unknown metric {raw}")
            else:
                used.add(base)
        for raw, label_names in selector_labels(expr):
            base, suffix = strip_histogram_suffix(raw, histograms)
            known = labels.get(names.get(base))
            if known is None:
                continue  # unknown metric (reported above) or no call site to learn from
            allowed = known | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
            for label in label_names:
                if label not in allowed:
                    errors.append(
                        f"{where}: {raw} has no label {label!r} "
                        f"(the code sets: {', '.join(sorted(known)) or 'none'})"
                    )
        if used and all(names[u] in labels for u in used):
            allowed = set().union(*(labels[names[u]] for u in used)) | TARGET_LABELS
            if any(u in histograms for u in used):
                allowed.add("le")
            for label in grouping_labels(expr):
                if label not in allowed:
                    errors.append(f"{where}: groups by {label!r}, which no metric of the query has")

    # The alert rules and inline PromQL of docs/metrics.md use known metrics and labels.
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc, re.S), 1):
        for m in re.finditer(r"expr:\s*\|?(.*?)(?=\n\s+(?:for|labels|annotations|- alert):|\Z)", block, re.S):
            check_query(f"docs/metrics.md yaml block {i} expr {m.group(1).strip()[:60]!r}", m.group(1))
    for span in re.findall(r"`([^`\n]*gateway_[^`\n]*)`", doc):
        if "{" in span or "(" in span:
            check_query(f"docs/metrics.md `{span}`", span)

    # (d) the dashboard parses; (c) its queries name known metrics with known labels.
    try:
        dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        errors.append(f"docs/grafana-dashboard.json: {e}")
        dash = None
    if dash is not None:
        queries = dashboard_queries(dash)
        if not queries:
            errors.append("docs/grafana-dashboard.json: no queries found")
        for where, expr in queries:
            check_query(f"docs/grafana-dashboard.json: {where}", expr)

    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s); {len(consts)} metric constants in {METRICS_RS.relative_to(ROOT)}",
              file=sys.stderr)
        return 1
    print(f"ok: {len(consts)} metrics documented; dashboard uses only known metrics and labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
