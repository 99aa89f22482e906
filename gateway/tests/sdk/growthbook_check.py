"""The real GrowthBook SDKs, evaluating the gateway's payload locally, agree with `/v1/assign`.

    python gateway/tests/sdk/growthbook_check.py path/to/gateway-binary [--break WHAT]

The gateway serves its experiments as a GrowthBook SDK payload (`GET /api/features/{client_key}`,
one feature per experiment whose value is the variant name; `src/assign/growthbook.rs` has the
mapping). A client that fetches it with GrowthBook's own SDK must show every unit the variant
`/v1/assign` gives, must count the unit as in the experiment exactly when the gateway does, and
its tracking callback (what a client turns into an exposure event) must fire for exactly those
pairs. This checks that with the unmodified SDKs: `growthbook` 4.0.0 for Python (in this
process) and `@growthbook/growthbook` 1.8.0 for Node (`growthbook_eval.mjs`, one process per
pass), each through its own fetch, cache and decryption, with one SDK instance per unit so
tracking dedup is per unit as in a real client.

The release gateway is started on port 0 with two client keys: `sdk-plain` and `sdk-secret`
(served as `encryptedFeatures`, AES-128-CBC). Checked:
1. The units: 2,000+ generated with a fixed seed, ids of every kind (ASCII, accented, emoji
   alone and mixed, CJK, JSON integers, also a few zero, empty, negative and beyond 2^53),
   countries, app versions as strings (some missing, some pre-release or `v`-prefixed), a
   device_id for most (some numeric), and the forced QA accounts.
2. For every unit and every experiment of `experiments.example.json` (explicitly requested, so
   stopped and ended ones too), `/v1/assign`'s (variant, in_experiment) equals each SDK's
   evalFeature: variant = the value, in_experiment = source "experiment" and
   experimentResult.inExperiment. Four passes: Python and JS, plain and encrypted key.
3. Each SDK's tracking callback fired exactly once for each pair with in_experiment true and
   never otherwise, with result.key the variant name.
4. Reload with new weights and coverage: ETag and dateUpdated change, a fresh fetch by each SDK
   (Python: `load_features(force_refresh=True)`; JS: a new process) agrees again on every pair,
   and some pairs did change (so the SDKs provably saw the new payload). A reload of an
   unchanged file keeps ETag and dateUpdated; `If-None-Match` with the ETag gives 304.
5. An edge-case file, reloaded: prerequisites requiring the parent's first variant (helper
   feature `{parent}.in_experiment`), a killed parent's fallback, a stopped parent's forced
   variant; forced units on a stopped, an ended, a zero-coverage and a targeted experiment and
   on a killed one (killing wins); numeric forced ids ("12345" forced, user_id 12345 and
   "12345" sent; "007" forced, 7 sent); three uneven variants with a custom seed; weights
   summing to 0.995; hash version 1 in a layer. The gateway's answers must exercise each corner,
   and checks 2 and 3 must hold on them.
6. Round trip, on a second gateway with write keys: for a few hundred units the Python SDK
   evaluates every experiment and its tracking callback sends "Experiment Viewed" through the
   real Segment client (`segment.analytics`, key A, async); the same units get `/v1/assign` with
   `log_exposure` (key B). After SIGTERM the lake read with DuckDB must hold the same multiset
   of (user_id, unit_attribute, unit_id, experiment, variant) for source 'segment' and
   'assign', non-empty, without duplicates.

`--break WHAT` breaks one thing on purpose, to see the check fail: `units` (no CJK ids),
`variant` (one gateway answer altered before comparing), `tracking` (one Python tracking call
dropped, one JS call repeated), `refresh` (Python does not refetch after the reload),
`unchanged` (the "unchanged" reload changes a weight), `edge` (the gateway reloads a slightly
different edge file between `/v1/assign` and the SDKs' fetch), `roundtrip` (one Segment
exposure reports another variant).

Prints ok/FAIL lines and ends with "N passed, M failed"; exits 1 on any failure.
"""

import argparse
import base64
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
from growthbook import GrowthBook
from segment.analytics import Client as SegmentClient

SEED = 20261202
UNITS = 2000            # generated; a dozen special units come on top
ROUND_TRIP_UNITS = 300
HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "experiments.example.json"
EVAL_JS = HERE / "growthbook_eval.mjs"
MAX_DETAILS = 5          # mismatches shown per failed check
JS_SDK_TIMEOUT_SECS = 60
BREAK = set()

CHECKS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    CHECKS["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)
    return ok


# ---- the gateway --------------------------------------------------------------------------------

class Gateway:
    """The real gateway binary on loopback; its log goes to a file (a pipe nobody reads could
    fill up and stall it)."""

    def __init__(self, binary, work, config_text, experiments):
        work.mkdir(parents=True)
        self.work = work
        self.data = work / "data"
        self.experiments_file = work / "experiments.json"
        self.write_experiments(experiments)
        config = work / "gateway.toml"
        config.write_text(config_text)
        self.log = work / "gateway.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "--config", str(config), "--listen", "127.0.0.1:0", "--storage",
                 str(self.data), "--state-dir", str(work / "state"), "--experiments",
                 str(self.experiments_file)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline, port = time.monotonic() + 30, None
        while port is None:
            port = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log.read_text())
            if port is None and (self.proc.poll() is not None or time.monotonic() > deadline):
                self.proc.kill()
                sys.exit(f"gateway did not report its address:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{port.group(1)}"
        self.pool = ThreadPoolExecutor(max_workers=8)

    def write_experiments(self, experiments):
        tmp = self.experiments_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(experiments, ensure_ascii=False, indent=1))
        tmp.replace(self.experiments_file)

    def request(self, method, path, body=None, headers=None):
        """-> (status, headers, body bytes); HTTP errors are answers too."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def payload(self, client_key, etag=None):
        """GET the payload: (status, ETag, JSON body or None)."""
        status, headers, body = self.request(
            "GET", f"/api/features/{client_key}", headers={"If-None-Match": etag} if etag else None)
        return status, headers.get("ETag"), (json.loads(body) if status == 200 else None)

    def reload(self, experiments, headers=None):
        self.write_experiments(experiments)
        status, _, body = self.request("POST", "/admin/reload", {}, headers)
        if status != 200:
            sys.exit(f"reload refused ({status}): {body.decode(errors='replace')}")
        return json.loads(body)

    def assign(self, units, keys, log_exposure=False, key=None):
        """One `/v1/assign` per unit -> per unit {experiment: assignment}; and the answers."""
        headers = {"Authorization": f"Bearer {key}"} if key else None

        def one(attributes):
            body = {"attributes": attributes, "experiments": keys}
            if log_exposure:
                body["log_exposure"] = True
            status, _, text = self.request("POST", "/v1/assign", body, headers)
            if status != 200:
                raise RuntimeError(f"/v1/assign answered {status}: {text[:500]!r}")
            return json.loads(text)

        answers = list(self.pool.map(one, units))
        return [{a["experiment"]: a for a in r["assignments"]} for r in answers], answers

    def finish(self):
        self.pool.shutdown()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "no exit within 60 s"
        check(f"gateway at {self.base} exits 0 on SIGTERM", code == 0,
              f"{code}; log tail:\n{self.log.read_text()[-2000:]}")
        return self.data


# ---- the units ----------------------------------------------------------------------------------

ACCENTED = ["josé", "niño", "müller", "søren", "élodie", "françois", "zoë", "łukasz", "ørsted"]
EMOJI = ["😀", "🚀", "🎉", "🦄", "🍕", "👩‍💻", "🇩🇪", "🔥"]
CJK = ["用户", "顧客", "사용자", "ユーザー", "客户"]
COUNTRIES = ["US", "US", "US", "US", "CA", "CA", "DE", "FR", "GB", "JP", "BR", "IN"]
VERSIONS = ["2.2.9", "2.3.0", "2.3.1", "2.10.1", "3.0.0", "1.9.9", "2.3.0-beta", "v2.4.0",
            "2.10.0+build5"]
KINDS = ["ascii", "accented", "emoji", "emoji_mixed", "cjk", "numeric"]
MAX_SAFE_INTEGER = 2**53 - 1

# Units chosen for the corners: the forced QA accounts, the numeric forced id in two forms and
# "007" beside 7, ids that count as no id (0, ""), a unit with no user_id, negative and huge
# numbers, a lone emoji and a lone CJK word.
SPECIAL_UNITS = [
    {"user_id": "qa-alice", "device_id": "dev-qa-alice", "country": "US", "app_version": "2.10.1"},
    {"user_id": "qa-bob", "device_id": "dev-qa-bob", "country": "CA", "app_version": "2.2.9"},
    {"user_id": 12345, "device_id": 12345, "country": "DE", "app_version": "2.3.0"},
    {"user_id": "12345", "country": "US", "app_version": "2.3.0"},
    {"user_id": 7, "device_id": "dev-seven", "country": "CA", "app_version": "3.0.0"},
    {"user_id": "007", "device_id": 7007, "country": "US"},
    {"user_id": -42, "device_id": -42, "country": "GB", "app_version": "2.3.1"},
    {"device_id": "dev-anonymous", "country": "US", "app_version": "2.3.0"},
    {"user_id": "", "device_id": "dev-empty-user", "country": "CA", "app_version": "2.10.1"},
    {"user_id": 0, "device_id": 0, "country": "US", "app_version": "2.3.0"},
    {"user_id": 123456789012345678, "device_id": "dev-huge", "country": "US",
     "app_version": "2.3.0"},
    {"user_id": "😀", "device_id": "🚀", "country": "US", "app_version": "2.3.0"},
    {"user_id": "🚀", "country": "CA", "app_version": "2.10.1"},
    {"user_id": "用户", "device_id": "设备-1", "country": "JP", "app_version": "2.3.0"},
]


def kind_of(uid):
    if isinstance(uid, int):
        return "numeric"
    if not isinstance(uid, str) or not uid:
        return "none"
    if uid.isascii():
        return "ascii"
    astral = any(ord(c) > 0xFFFF for c in uid)
    if astral:
        rest = "".join(c for c in uid if ord(c) <= 0xFFFF and c not in "\u200d")
        return "emoji_mixed" if rest else "emoji"
    if any("\u3040" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" for c in uid):
        return "cjk"
    return "accented"


def make_units(seed):
    """The special units, then UNITS generated ones; deterministic for a seed."""
    rng = random.Random(seed)
    numbers = iter(rng.sample(range(1, 10**9), UNITS))
    emoji_word = lambda n: "".join(EMOJI[int(d)] for d in oct(n + 64)[2:])  # 3+ emoji, unique per n
    makers = {
        "ascii": lambda n: rng.choice([f"user-{n}", f"U{n:05d}", f"acct_{n}_{rng.randrange(99)}"]),
        "accented": lambda n: f"{rng.choice(ACCENTED)}-{n}",
        "emoji": emoji_word,
        "emoji_mixed": lambda n: rng.choice([f"u{rng.choice(EMOJI)}{n}", f"{n}{rng.choice(EMOJI)}x",
                                             f"{rng.choice(ACCENTED)}{rng.choice(EMOJI)}{n}"]),
        "cjk": lambda n: f"{rng.choice(CJK)}{n}",
        "numeric": lambda n: next(numbers) * rng.choice([1, 1, 1, 1, 1, -1]),
    }
    kinds = [k for k in KINDS if not ("units" in BREAK and k == "cjk")]
    units = [dict(u) for u in SPECIAL_UNITS if not ("units" in BREAK and kind_of(u.get("user_id")) == "cjk")]
    for n in range(UNITS):
        u = {"user_id": makers[kinds[n % len(kinds)]](n)}
        r = rng.random()
        if r < 0.70:
            u["device_id"] = f"dev-{n:05d}-{rng.getrandbits(32):08x}"
        elif r < 0.85:
            u["device_id"] = 10**9 + n * 7919
        elif r < 0.90:
            u["device_id"] = f"端末{n}" if n % 2 else f"📱{n}"
        if rng.random() < 0.92:
            u["country"] = rng.choice(COUNTRIES)
        if rng.random() < 0.85:
            u["app_version"] = rng.choice(VERSIONS)
        units.append(u)
    return units


def describe_units(units):
    kinds = Counter(kind_of(u.get("user_id")) for u in units)
    dev = Counter("none" if "device_id" not in u else type(u["device_id"]).__name__ for u in units)
    return kinds, dev


def check_units(units):
    kinds, devices = describe_units(units)
    need = {"ascii", "accented", "emoji", "emoji_mixed", "cjk", "numeric"}
    check(f"{len(units)} units (at least 2,000): user_id kinds {dict(sorted(kinds.items()))}",
          len(units) >= 2000 and need <= {k for k, c in kinds.items() if c >= 50},
          f"every kind of {sorted(need)} at least 50 times")
    text = " ".join(str(u.get("user_id")) for u in units)
    letters = {c: c in text for c in "éñüø😀🚀用顧사"}
    check("the ids contain é ñ ü ø 😀 🚀 用 顧 사", all(letters.values()),
          [c for c, seen in letters.items() if not seen])
    has = lambda f: sum(1 for u in units if f(u))
    facts = {
        "numeric device_id": has(lambda u: isinstance(u.get("device_id"), int)),
        "string device_id": has(lambda u: isinstance(u.get("device_id"), str)),
        "no device_id": has(lambda u: "device_id" not in u),
        "no app_version": has(lambda u: "app_version" not in u),
        "no country": has(lambda u: "country" not in u),
        "app_version 2.10.1": has(lambda u: u.get("app_version") == "2.10.1"),
        "country DE": has(lambda u: u.get("country") == "DE"),
    }
    check(f"attributes vary: {facts}", all(v > 0 for v in facts.values())
          and devices["str"] > len(units) / 2, facts)
    ids = {u.get("user_id") for u in units}
    check("qa-alice and qa-bob are among them", {"qa-alice", "qa-bob"} <= ids)
    forms = Counter(json.dumps(u.get("user_id"), ensure_ascii=False) for u in units)
    check("the user ids are distinct (as JSON values)", max(forms.values()) == 1,
          [f for f, n in forms.items() if n > 1][:MAX_DETAILS])
    check("the units are the same for the same seed",
          json.dumps(make_units(SEED)) == json.dumps(units))


# ---- the SDKs -----------------------------------------------------------------------------------

class PythonSdk:
    """One GrowthBook instance per unit, fed by the SDK's own fetch and process-wide cache."""

    def __init__(self, base, client_key, decryption_key=None):
        self.options = {"api_host": base, "client_key": client_key}
        if decryption_key:
            self.options["decryption_key"] = decryption_key

    def evaluate(self, units, keys, refresh=False, on_viewed=None):
        """-> (per unit [(value, source, inExperiment)], [(unit, experiment, key, attr, value)])"""
        results, tracked = [], []
        for i, attributes in enumerate(units):
            def viewed(experiment, result, user_context=None, _i=i, **_):
                tracked.append((_i, experiment.key, result.key, result.hashAttribute, result.hashValue))
                if on_viewed:
                    on_viewed(units[_i], experiment, result)
            # destroy() clears the dict it was given: pass a copy.
            gb = GrowthBook(attributes=dict(attributes), on_experiment_viewed=viewed, **self.options)
            if refresh and i == 0:
                gb.load_features(force_refresh=True)   # the cache is shared: once is enough
            row = []
            for key in keys:
                r = gb.eval_feature(key)
                row.append((r.value, r.source, r.experimentResult.inExperiment if r.experimentResult else None))
            results.append(row)
            gb.destroy()
        return results, tracked


class JsSdk:
    """growthbook_eval.mjs in its own process: a fresh SDK module cache, one fetch."""

    def __init__(self, base, client_key, work, decryption_key=None):
        self.args = [base, client_key]
        self.extra = [decryption_key] if decryption_key else []
        self.work = work
        self.client_key = client_key

    def start(self, units, keys, label):
        stem = self.work / f"js-{label}-{self.client_key}"
        self.units_file, self.out_file = stem.with_suffix(".units.json"), stem.with_suffix(".out.json")
        self.units_file.write_text(json.dumps({"experiments": keys, "units": units}))
        self.out_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["node", str(EVAL_JS), *self.args, str(self.units_file), str(self.out_file), *self.extra],
            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def result(self):
        try:
            output, _ = self.proc.communicate(timeout=JS_SDK_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output = f"no answer within {JS_SDK_TIMEOUT_SECS} s"
        if self.proc.returncode != 0 or not self.out_file.exists():
            return None, output
        out = json.loads(self.out_file.read_text())
        results = [[tuple(x) for x in row] for row in out["results"]]
        tracked = [tuple(t) for t in out["tracked"]]
        if "tracking" in BREAK and tracked:
            tracked.append(tracked[-1])
        return (results, tracked, out["init"]), output


def expected_tracking(gateway):
    return Counter((i, exp, a["variant"]) for i, row in enumerate(gateway)
                   for exp, a in row.items() if a["in_experiment"])


def compare(label, units, keys, gateway, sdk):
    """Checks 2 and 3 for one SDK pass."""
    results, tracked = sdk
    bad, pairs = [], 0
    for i, (unit, row) in enumerate(zip(units, results)):
        for key, (value, source, in_exp) in zip(keys, row):
            a = gateway[i][key]
            pairs += 1
            sdk_in = source == "experiment" and bool(in_exp)
            if (a["variant"], a["in_experiment"]) != (value, sdk_in):
                bad.append(f"unit {i} {json.dumps(unit, ensure_ascii=False)} {key}: gateway "
                           f"{a['variant']!r} in_experiment={a['in_experiment']} reason={a['reason']} "
                           f"bucket={a['bucket']}; SDK {value!r} source={source} inExperiment={in_exp}")
    ok = check(f"{label}: SDK equals /v1/assign on all {pairs} (unit, experiment) pairs "
               f"({len(units)} units x {len(keys)} experiments)",
               not bad and len(results) == len(units) and pairs == len(units) * len(keys),
               f"{len(bad)} of {pairs} pairs differ" + "".join(f"\n      {b}" for b in bad[:MAX_DETAILS]))
    want = expected_tracking(gateway)
    got = Counter((i, exp, key) for i, exp, key, _, _ in tracked)
    missing, extra = want - got, got - want
    details = [f"not tracked: unit {i} {json.dumps(units[i], ensure_ascii=False)} {e} {v!r}"
               for (i, e, v) in list(missing)[:MAX_DETAILS]]
    details += [f"tracked but not in it (or twice): unit {i} {json.dumps(units[i], ensure_ascii=False)} "
                f"{e} {v!r} x{n}" for (i, e, v), n in list(extra.items())[:MAX_DETAILS]]
    check(f"{label}: tracking callback fired once for each of the {sum(want.values())} in-experiment "
          f"pairs, with result.key the variant, and for nothing else",
          not missing and not extra and sum(want.values()) > 0,
          f"{sum(missing.values())} missing, {sum(extra.values())} extra" +
          "".join(f"\n      {d}" for d in details))
    return ok


def agreement(label, gw, units, keys, gateway, secret, refresh=False):
    """Checks 2 and 3 with both SDKs and both client keys; JS runs beside the Python passes."""
    js = [JsSdk(gw.base, "sdk-plain", gw.work).start(units, keys, label),
          JsSdk(gw.base, "sdk-secret", gw.work, secret).start(units, keys, label)]
    started = time.monotonic()
    for client_key, dk in (("sdk-plain", None), ("sdk-secret", secret)):
        results, tracked = PythonSdk(gw.base, client_key, dk).evaluate(units, keys, refresh=refresh)
        if "tracking" in BREAK and tracked:
            tracked.pop(0)
        compare(f"{label}, Python SDK, {client_key}", units, keys, gateway, (results, tracked))
    for client_key, j in zip(("sdk-plain", "sdk-secret"), js):
        got, output = j.result()
        name = f"{label}, JS SDK, {client_key}"
        if got is None:
            check(f"{name}: growthbook_eval.mjs ran", False, output[-2000:])
            continue
        results, tracked, init = got
        check(f"{name}: one fetch from the gateway, the other instances from the SDK's cache {init}",
              init.get("network") == 1 and sum(init.values()) == len(units), init)
        compare(name, units, keys, gateway, (results, tracked))
    return time.monotonic() - started


# ---- experiments files --------------------------------------------------------------------------

def reloaded_example(example):
    e = json.loads(json.dumps(example))
    by_key = {x["key"]: x for x in e["experiments"]}
    by_key["checkout_button"]["weights"] = [0.2, 0.8]
    by_key["new_onboarding"]["coverage"] = 0.6
    by_key["legacy_pricing_page"]["weights"] = [0.9, 0.1]
    return e


EDGE = {"experiments": [
    {"key": "parent_ab", "variants": ["a", "b"], "forced": {"qa-bob": "a"}},
    {"key": "child_of_first", "variants": ["off", "on"],
     "prerequisites": [{"experiment": "parent_ab", "variants": ["a"]}]},
    {"key": "child_of_any", "variants": ["off", "on"], "weights": [0.3, 0.7],
     "prerequisites": [{"experiment": "parent_ab", "variants": ["a", "b"]}]},
    {"key": "child_of_second", "variants": ["off", "on"],
     "prerequisites": [{"experiment": "parent_ab", "variants": ["b"]}]},
    {"key": "killed_parent", "variants": ["x", "y"], "status": "killed", "fallback": "y",
     "forced": {"qa-alice": "x"}},
    {"key": "child_of_killed_fallback", "variants": ["off", "on"],
     "prerequisites": [{"experiment": "killed_parent", "variants": ["y"]}]},
    {"key": "stopped_forced", "variants": ["control", "beta"], "status": "stopped",
     "forced": {"qa-alice": "beta", "qa-bob": "control", "😀": "beta"}},
    {"key": "child_of_stopped", "variants": ["off", "on"], "coverage": 1,
     "prerequisites": [{"experiment": "stopped_forced", "variants": ["beta"]}]},
    {"key": "ended_forced", "variants": ["control", "festive"],
     "start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z",
     "forced": {"qa-bob": "festive", "用户": "festive"}},
    {"key": "forced_numeric", "variants": ["control", "treatment"],
     "forced": {"12345": "treatment", "007": "treatment", "-42": "control"}},
    {"key": "forced_targeted", "variants": ["control", "treatment"],
     "condition": {"country": {"$in": ["DE"]}}, "forced": {"qa-bob": "treatment"}},
    {"key": "zero_coverage", "variants": ["control", "treatment"], "coverage": 0,
     "forced": {"qa-alice": "treatment"}},
    {"key": "three_uneven", "variants": ["v0", "v1", "v2"], "weights": [0.1, 0.6, 0.3],
     "seed": "custom-seed-7", "coverage": 0.9},
    # Accepted (within 0.01 of 1): the payload must carry the weights /v1/assign's ranges use.
    {"key": "weights_995", "variants": ["a", "b"], "weights": [0.3, 0.695],
     "hash_attribute": "device_id"},
    {"key": "legacy_layer_a", "variants": ["control", "treatment"], "hash_version": 1,
     "layer": {"name": "legacy", "range": [0.0, 0.3]}},
    {"key": "legacy_layer_b", "variants": ["c", "t1", "t2"], "hash_version": 1,
     "seed": "legacy-b", "weights": [0.5, 0.25, 0.25],
     "layer": {"name": "legacy", "range": [0.3, 1.0]}},
]}


def check_edge_corners(units, gateway):
    """The edge file's answers must actually reach each corner (else agreement proves little)."""
    ids = [u.get("user_id") for u in units]
    at = lambda uid: gateway[ids.index(uid)]
    inside = lambda key: [i for i, row in enumerate(gateway) if row[key]["in_experiment"]]
    first = inside("child_of_first")
    check(f"edge: {len(first)} units in child_of_first, each in parent_ab's first variant",
          first and all(gateway[i]["parent_ab"]["variant"] == "a" for i in first), first[:5])
    check("edge: nobody in child_of_killed_fallback (a killed parent has nobody in it)",
          not inside("child_of_killed_fallback") and not inside("killed_parent"))
    check("edge: killing wins over forcing (qa-alice gets killed_parent's fallback y)",
          at("qa-alice")["killed_parent"]["variant"] == "y")
    forced = lambda key: {ids[i]: gateway[i][key]["variant"] for i in inside(key)}
    check("edge: forced units on a stopped experiment are in it, nobody else",
          forced("stopped_forced") == {"qa-alice": "beta", "qa-bob": "control", "😀": "beta"},
          forced("stopped_forced"))
    check("edge: child_of_stopped holds only forced units of the stopped parent's 'beta'",
          {ids[i] for i in inside("child_of_stopped")} == {"qa-alice", "😀"},
          [ids[i] for i in inside("child_of_stopped")])
    check("edge: forced units on an ended experiment are in it, nobody else",
          forced("ended_forced") == {"qa-bob": "festive", "用户": "festive"}, forced("ended_forced"))
    numeric = {uid: (at(uid)["forced_numeric"]["variant"], at(uid)["forced_numeric"]["reason"])
               for uid in (12345, "12345", 7, "007", -42)}
    check(f"edge: numeric forced ids {numeric}",
          numeric == {12345: ("treatment", "forced"), "12345": ("treatment", "forced"),
                      7: (numeric[7][0], "hashed"), "007": ("treatment", "forced"),
                      -42: ("control", "forced")})
    check("edge: forcing wins over a condition (qa-bob, country CA, in forced_targeted)",
          at("qa-bob")["forced_targeted"]["reason"] == "forced" and inside("forced_targeted")
          and any(gateway[i]["forced_targeted"]["reason"] == "condition_failed" for i in range(len(units))))
    check("edge: coverage 0 holds only the forced qa-alice", forced("zero_coverage") == {"qa-alice": "treatment"},
          forced("zero_coverage"))
    seen = Counter(gateway[i]["three_uneven"]["variant"] for i in inside("three_uneven"))
    check(f"edge: three_uneven uses all three variants {dict(seen)}, and coverage 0.9 leaves some out",
          set(seen) == {"v0", "v1", "v2"} and len(inside("three_uneven")) < len(units) * 0.95
          and seen["v1"] > seen["v2"] > seen["v0"])
    a, b = set(inside("legacy_layer_a")), set(inside("legacy_layer_b"))
    check(f"edge: hash version 1 layer: {len(a)} and {len(b)} units in its two experiments, none in both",
          a and b and not a & b)


# ---- the round trip (check 6) -------------------------------------------------------------------

def round_trip_units(units):
    """Units with a user_id Segment accepts, distinct ids (gateway exposure ids are per unit)."""
    chosen, seen = [], set()
    for u in units:
        uid, dev = u.get("user_id"), u.get("device_id")
        if not uid or (isinstance(uid, int) and abs(uid) > MAX_SAFE_INTEGER):
            continue
        keys = {("u", str(uid))} | ({("d", str(dev))} if dev not in (None, 0) else set())
        if keys & seen:
            continue
        seen |= keys
        chosen.append(u)
        if len(chosen) == ROUND_TRIP_UNITS:
            break
    return chosen


def round_trip(binary, work, example):
    key_a, key_b, admin = (secrets.token_hex(16) for _ in range(3))
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()
    config = ("experiments_poll_secs = 0\n[[growthbook.client_keys]]\nkey = \"sdk-plain\"\n"
              f"[auth]\nadmin_token_sha256 = \"{sha(admin)}\"\n"
              f"[[auth.write_keys]]\nsource = \"segment\"\nsha256 = \"{sha(key_a)}\"\n"
              f"[[auth.write_keys]]\nsource = \"assign\"\nsha256 = \"{sha(key_b)}\"\n")
    gw = Gateway(binary, work, config, example)
    keys = [e["key"] for e in example["experiments"]]
    units = round_trip_units(make_units(SEED))
    kinds = Counter(kind_of(u["user_id"]) for u in units)
    check(f"round trip: {len(units)} units, user_id kinds {dict(sorted(kinds.items()))}",
          len(units) == ROUND_TRIP_UNITS and len(kinds) >= 6)
    status, _, _ = gw.request("POST", "/v1/assign", {"attributes": {"user_id": "x"}, "experiments": keys})
    check(f"round trip: /v1/assign without a key is refused ({status})", status == 401)

    errors, sent = [], Counter()
    analytics = SegmentClient(write_key=key_a, host=gw.base, sync_mode=False, max_retries=2,
                              timeout=10, on_error=lambda e, batch: errors.append(repr(e)))
    broken = ["roundtrip" in BREAK]

    def on_viewed(unit, experiment, result):
        variant = result.key
        if broken[0]:
            variant, broken[0] = "not-" + variant, False
        analytics.track(user_id=unit["user_id"], event="Experiment Viewed", properties={
            "experimentId": experiment.key, "variationId": variant,
            "hashAttribute": result.hashAttribute, "hashValue": str(result.hashValue)})
        sent["tracks"] += 1

    _, tracked = PythonSdk(gw.base, "sdk-plain").evaluate(units, keys, on_viewed=on_viewed)
    analytics.flush()
    analytics.shutdown()
    check(f"round trip: the Segment client sent {sent['tracks']} tracks without errors",
          not errors and sent["tracks"] == len(tracked) > 0, errors[:3])
    _, answers = gw.assign(units, keys, log_exposure=True, key=key_b)
    logged = sum(a.get("exposures_logged", 0) for a in answers)
    check(f"round trip: /v1/assign logged {logged} exposures, as many as the SDK tracked",
          logged == len(tracked), f"{logged} vs {len(tracked)}")
    data = gw.finish()

    con = duckdb.connect()
    scan = (f"read_parquet('{data}/assignments/**/*.parquet', hive_partitioning = true, "
            "union_by_name = true)")
    rows = con.execute(f"SELECT source, user_id, unit_attribute, unit_id, experiment, variant "
                       f"FROM {scan}").fetchall()
    by_source = {s: Counter(r[1:] for r in rows if r[0] == s) for s in ("segment", "assign")}
    seg, asg = by_source["segment"], by_source["assign"]
    others = Counter(r[0] for r in rows if r[0] not in by_source)
    check(f"round trip: the lake holds {sum(seg.values())} 'segment' and {sum(asg.values())} 'assign' "
          f"exposure rows (and {dict(others)} others)",
          sum(seg.values()) == sum(asg.values()) == len(tracked) > 0 and not others)
    dups = [(s, k, n) for s, c in by_source.items() for k, n in c.items() if n > 1]
    check("round trip: no (user_id, unit_attribute, unit_id, experiment, variant) twice in a source",
          not dups, dups[:MAX_DETAILS])
    only_seg, only_asg = seg - asg, asg - seg
    check("round trip: the same multiset of (user_id, unit_attribute, unit_id, experiment, variant) "
          "from the SDK via Segment as from /v1/assign",
          not only_seg and not only_asg and seg,
          f"{sum(only_seg.values())} only via Segment, {sum(only_asg.values())} only via assign"
          + "".join(f"\n      segment only: {k}" for k in list(only_seg)[:MAX_DETAILS])
          + "".join(f"\n      assign only:  {k}" for k in list(only_asg)[:MAX_DETAILS]))
    ids = con.execute(f"SELECT count(*), count(DISTINCT event_id), count(DISTINCT config_version) "
                      f"FILTER (WHERE source = 'assign') FROM {scan}").fetchone()
    check(f"round trip: every row has its own event_id, one config_version on assign rows {ids}",
          ids[0] == ids[1] and ids[2] == 1)


# ---- the check ----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="GrowthBook SDKs vs /v1/assign")
    ap.add_argument("binary", help="the gateway binary")
    ap.add_argument("--break", dest="breaks", action="append", default=[],
                    choices=["units", "variant", "tracking", "refresh", "unchanged", "edge", "roundtrip"],
                    help="break one thing on purpose, to see the check fail")
    args = ap.parse_args()
    BREAK.update(args.breaks)
    # Its per-evaluation warnings ("Unknown feature") would drown the report; errors still show.
    logging.getLogger("growthbook").setLevel(logging.ERROR)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="growthbook-check-"))
    example = json.loads(EXAMPLE.read_text())
    keys = [e["key"] for e in example["experiments"]]
    secret = base64.b64encode(os.urandom(16)).decode()
    config = ("experiments_poll_secs = 0\n[[growthbook.client_keys]]\nkey = \"sdk-plain\"\n"
              f"[[growthbook.client_keys]]\nkey = \"sdk-secret\"\ndecryption_key = \"{secret}\"\n")
    gw = Gateway(args.binary, work / "gateway", config, example)

    # 1. The units.
    units = make_units(SEED)
    check_units(units)

    # The payload as served.
    status, etag, plain = gw.payload("sdk-plain")
    check(f"GET /api/features/sdk-plain: 200, ETag {etag}, one feature per experiment",
          status == 200 and etag and set(keys) <= set((plain or {}).get("features", {})), status)
    status, etag2, enc = gw.payload("sdk-secret")
    check("GET /api/features/sdk-secret: encryptedFeatures, no plain features, same ETag",
          status == 200 and etag2 == etag and (enc or {}).get("encryptedFeatures")
          and not enc.get("features"), status)
    status, _, _ = gw.payload("sdk-unknown")
    check(f"GET /api/features/sdk-unknown: 404 ({status})", status == 404)

    # 2, 3. The example file.
    before, _ = gw.assign(units, keys)
    if "variant" in BREAK:
        a = next(a for a in before[20].values() if a["in_experiment"])
        a["variant"] = "control" if a["variant"] != "control" else "treatment"
    agreement("example file", gw, units, keys, before, secret)

    # 4. Reload with changed weights and coverage.
    changed = reloaded_example(example)
    r = gw.reload(changed)
    check(f"reload with new weights and coverage: changed {r}", r.get("changed") is True)
    status, etag_new, plain_new = gw.payload("sdk-plain")
    check(f"after the reload the ETag changed ({etag} -> {etag_new})", status == 200 and etag_new != etag)
    check(f"after the reload dateUpdated changed ({plain['dateUpdated']} -> {plain_new['dateUpdated']})",
          plain_new["dateUpdated"] != plain["dateUpdated"])
    status, _, _ = gw.payload("sdk-plain", etag=etag)
    check(f"If-None-Match with the old ETag: 200 ({status})", status == 200)
    after, _ = gw.assign(units, keys)
    moved = Counter(k for b, a in zip(before, after) for k in keys
                    if (b[k]["variant"], b[k]["in_experiment"]) != (a[k]["variant"], a[k]["in_experiment"]))
    check(f"the reload moved {sum(moved.values())} (unit, experiment) pairs {dict(moved)}",
          {"checkout_button", "new_onboarding", "legacy_pricing_page"} <= set(moved))
    agreement("after the reload", gw, units, keys, after, secret, refresh="refresh" not in BREAK)

    same = json.loads(json.dumps(changed))
    if "unchanged" in BREAK:
        same["experiments"][0]["weights"] = [0.21, 0.79]
    r = gw.reload(same)
    status, etag_same, plain_same = gw.payload("sdk-plain")
    _, _, enc_before = gw.payload("sdk-secret")
    check(f"a reload of an unchanged file: changed {r['changed']}, ETag and dateUpdated kept",
          status == 200 and etag_same == etag_new and plain_same["dateUpdated"] == plain_new["dateUpdated"],
          f"{etag_new} -> {etag_same}, {plain_new['dateUpdated']} -> {plain_same['dateUpdated']}")
    for client_key in ("sdk-plain", "sdk-secret"):
        status, etag_304, body = gw.payload(client_key, etag=etag_same)
        check(f"If-None-Match with the current ETag on {client_key}: 304 ({status}), same ETag",
              status == 304 and etag_304 == etag_same)

    # 5. The edge-case file.
    edge_keys = [e["key"] for e in EDGE["experiments"]]
    r = gw.reload(EDGE)
    check(f"reload of the edge-case file: changed {r['changed']}", r["changed"] is True)
    edge, _ = gw.assign(units, edge_keys)
    check_edge_corners(units, edge)
    if "edge" in BREAK:   # the SDKs will fetch a payload the answers above did not come from
        tweaked = json.loads(json.dumps(EDGE))
        tweaked["experiments"][edge_keys.index("three_uneven")]["seed"] = "custom-seed-8"
        gw.reload(tweaked)
    agreement("edge-case file", gw, units, edge_keys, edge, secret, refresh=True)
    gw.finish()

    # 6. Exposures through Segment and through /v1/assign.
    round_trip(args.binary, work / "round-trip", example)

    if CHECKS["failed"]:
        print(f"logs and files are kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"took {time.monotonic() - started:.1f} s")
    print(f"{CHECKS['passed']} passed, {CHECKS['failed']} failed")
    return 1 if CHECKS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
