"""The real analytics SDKs, unmodified and pointed at the gateway, land their calls in the lake.

    python gateway/tests/sdk/analytics_check.py path/to/gateway-binary [--break WHAT]

Starts the gateway binary on port 0 (temporary data and state folders, `limits.max_events = 100`,
an admin token for GET /metrics, and two write keys per SDK: a plain one and one limited to 50
events/s with a burst of 100) and drives four SDKs at it over loopback only:
- segment-analytics-python 2.4.0 (`segment.analytics.Client`, gzip on for the main run, off for
  the rate-limited one);
- rudder-sdk-python 2.1.9 (`rudderstack.analytics.Client`, gzip on, its default);
- posthog 7.91.1 (`Posthog(..., gzip=True)` for the main run; capture mode v0, so only
  `/batch/`; no personal API key, so no flag polling; exposures sent as
  `capture("$feature_flag_called", ...)` since the flag APIs need a `/flags` endpoint the gateway
  does not serve);
- @segment/analytics-node 3.1.0, through `segment_node.mjs` (never gzips).
Every SDK is given its host explicitly, proxies are cleared from the environment, and
POSTHOG_CAPTURE_MODE is removed, so nothing leaves 127.0.0.1.

What is checked (each an ok/FAIL line), and why:
1. Mapping. Each SDK sends 200 track calls (own message ids / uuids; a fifth with only an
   anonymousId; times 2 to 22 hours ago, some with +05:30 or -08:00 offsets; eight mixes of
   revenue / value / strings / numbers / booleans / nested objects / arrays / nulls; one name of
   exactly 256 bytes), 30 "Experiment Viewed" calls (half with hashAttribute + hashValue, some
   numeric variationIds) or `$feature_flag_called` captures (string and boolean responses), and
   identify/page/screen/group/alias calls ($pageview, $identify, set(), alias() for PostHog).
   After SIGTERM the lake must hold every track call as exactly one conversions row (event_id,
   user_id with the anonymousId fallback, ts equal to the sent time to the millisecond, or to
   the microsecond for the SDKs that send microseconds, name, value from revenue else value,
   props exactly the flat scalars left, source the key's source, ts_out_of_bounds false), every
   exposure as one assignments row (experiment, variant, unit_attribute/unit_id when sent, else
   user_id and the user), and none of the skipped calls; the skipped-calls metric (read before
   SIGTERM) must count them per route. PostHog adds its own `$lib`, `$os`, ... properties:
   those must be in props too (only `$` keys beyond ours, `$lib` = posthog-python). Nothing else
   may be in the tables, no SDK may report an error, and the gateway must have seen only SDK
   routes answered 200 or 429 (so no SDK hit an endpoint it does not serve, or got an error).
2. Dedup. After the main flush each SDK resends 45 of its message ids (other content) in a
   later flush: gateway_events_duplicate_total must rise by exactly 45 per SDK (and by 0 during
   the main flush), and the lake keeps the first content, one row per id.
3. 429. Through the rate-limited keys each SDK sends 350 tracks in batches of up to 100 (with
   retries set so that each finishes in seconds): 429 answers must really have happened (the
   route's gateway_http_requests_total{status="429"}; node counts them itself, and checks that
   each carried Retry-After), the
   duplicate metric must not move (no accepted batch was resent), and every event must be in
   the lake exactly once. The batches also carry identify/page calls (PostHog: $pageview): the
   skipped metric must count each once, however often its batch was refused and resent.
4. A bad event in a batch (a track named with 300 bytes) goes to the rejected table with its
   reason (invalid_value, the name's length) and source, and does not fail its batch: the SDK
   reports no error and every other call of that flush landed (check 1).

The traffic is fixed by SEED and the run takes about 20 s. `--break WHAT` runs the check with one
deliberate mistake, to see it fail: `mapping` (expects value before revenue), `dedup` (resends
under new ids, and one old id during the 429s), `ratelimit` (no rate limit on the limited keys),
`retry` (SDK retries off), `rejected` (the bad name is 200 bytes: valid), `skipped` (expects one
skipped call too many, and takes a stored call for a skipped one), `stray` (an unexpected event
with 70 props, and node posting to a path that is not served).

Prints ok/FAIL lines and `N passed, M failed`; exits 1 on any failure (the temp folder, with
the gateway's log, is kept then).
"""

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

# Loopback only, whatever the caller's environment says.
for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
            "POSTHOG_CAPTURE_MODE", "POSTHOG_CAPTURE_COMPRESSION", "POSTHOG_RELEASE_ID"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

import duckdb  # noqa: E402
from posthog import Posthog  # noqa: E402
from rudderstack.analytics import Client as RudderClient  # noqa: E402
from segment.analytics import Client as SegmentClient  # noqa: E402

SEED = 7
HERE = Path(__file__).resolve().parent
NODE_HELPER = HERE / "segment_node.mjs"
DEADLINE_SECS = 110          # the whole run; a watchdog ends it past this
FLUSH_SECS = 45              # any one SDK flush
ADMIN_TOKEN = "analytics-check-admin-token"
NOW = dt.datetime.now(dt.timezone.utc)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
PST = dt.timezone(dt.timedelta(hours=-8))
PH_NS = uuid.UUID("6f1c2b4e-8a1d-4c3e-9b7a-2d5e8f0a1b3c")

N_TRACK, N_EXPOSURE, N_RESENT_TRACK, N_RESENT_EXPOSURE, N_RATE = 200, 30, 40, 5, 350
TRACK_NAMES = ["Order Completed", "Signed Up", "Product Added", "Café ✓ geöffnet", "é" * 128]
assert len(TRACK_NAMES[-1].encode()) == 256

# tag: (source of the plain key, source of the limited key, ts precision in µs the SDK sends)
SDKS = {
    "segment-python": ("segment-python", "segment-python-limited", 1000),
    "rudder-python": ("rudder-python", "rudder-python-limited", 1),
    "posthog-python": ("posthog-python", "posthog-python-limited", 1),
    "segment-node": ("segment-node", "segment-node-limited", 1000),
}
ROUTE = {"segment-python": "segment", "rudder-python": "segment", "segment-node": "segment",
         "posthog-python": "posthog"}
KEY = {source: f"key-{source}-{i:02d}" for i, source in
       enumerate(s for plain, limited, _ in SDKS.values() for s in (plain, limited))}
KEY = {s: ("phc_" + k if s.startswith("posthog") else k) for s, k in KEY.items()}

CHECKS = {"passed": 0, "failed": 0}
BREAK = None
STARTED = []   # processes this script started, ended by the watchdog or at the end


def check(name, ok, detail=""):
    CHECKS["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)
    return ok


def micros(t):
    return (t - EPOCH) // dt.timedelta(microseconds=1)


def sha256(s):
    return hashlib.sha256(s.encode()).hexdigest()


# ---- the gateway --------------------------------------------------------------------------------

class Gateway:
    def __init__(self, binary, work):
        self.work = work
        self.data = work / "data"
        lines = ["[limits]", "max_events = 100", "[auth]",
                 f'admin_token_sha256 = "{sha256(ADMIN_TOKEN)}"']
        for plain, limited, _ in SDKS.values():
            for source in (plain, limited):
                lines += ["[[auth.write_keys]]", f'source = "{source}"', f'sha256 = "{sha256(KEY[source])}"']
                if source == limited and BREAK != "ratelimit":
                    lines += ["events_per_sec = 50", "burst = 100"]
        config = work / "gateway.toml"
        config.write_text("\n".join(lines) + "\n")
        self.log = (work / "gateway.log").open("w")
        self.proc = subprocess.Popen(
            [binary, "--config", str(config), "--listen", "127.0.0.1:0", "--storage", str(self.data),
             "--state-dir", str(work / "state")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        STARTED.append(self.proc)
        seen, port = [], None
        while port is None:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit(f"gateway did not report its address: {seen!r}")
            seen.append(line)
            self.log.write(line)
            port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        self.base = f"http://127.0.0.1:{port.group(1)}"
        # Keep draining its output (into gateway.log) so it never blocks on a full pipe.
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.log.write(line)
        self.log.flush()

    def metrics(self):
        req = urllib.request.Request(self.base + "/metrics",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Metrics(resp.read().decode())

    def finish(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "still running 30 s after SIGTERM (killed)"
        self.drain.join(timeout=5)
        check("gateway exits 0 on SIGTERM", code == 0, code)



def end_started():
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()


class Metrics:
    """Prometheus text: `name{a="b",...} value` lines."""

    def __init__(self, text):
        self.series = []
        for line in text.splitlines():
            m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
            if m and not line.startswith("#"):
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                self.series.append((m.group(1), labels, float(m.group(3))))

    def get(self, name, **labels):
        return sum(v for n, ls, v in self.series
                   if n == name and all(ls.get(k) == w for k, w in labels.items()))

    def dup(self):
        return self.get("gateway_events_duplicate_total")

    def skipped(self, route):
        return self.get("gateway_sdk_calls_skipped_total", route=route)

    def status(self, route, status):
        return self.get("gateway_http_requests_total", route=route, status=str(status))


# ---- traffic and what the lake must hold --------------------------------------------------------

def stamp(rng, i):
    """A time 2 to 22 hours ago with microseconds; every 7th in +05:30, every 11th in -08:00."""
    t = NOW - dt.timedelta(hours=2, seconds=rng.uniform(0, 20 * 3600))
    return t.astimezone(IST if i % 7 == 3 else PST if i % 11 == 5 else dt.timezone.utc)


def properties_case(i, big_int):
    """(properties to send or None, the value the row must have, the props it must have)."""
    k = i % 8
    if k == 0:
        revenue = round(10 + i * 0.37, 2)
        return ({"revenue": revenue, "currency": "EUR", "items": [1, 2], "meta": {"a": 1},
                 "coupon": None}, revenue, {"currency": "EUR"})
    if k == 1:
        return {"value": 3, "plan": "pro", "trial": False}, 3, {"plan": "pro", "trial": False}
    if k == 2:   # a revenue that is not a number stays a prop; value is then the value
        return {"revenue": "19.99", "value": 7.25}, 7.25, {"revenue": "19.99"}
    if k == 3:   # both numbers: revenue wins, value stays a prop
        if BREAK == "mapping":
            return {"revenue": 5.5, "value": 2}, 2, {"revenue": 5.5}
        return {"revenue": 5.5, "value": 2}, 5.5, {"value": 2}
    if k == 4:
        return {}, None, {}
    if k == 5:
        text = 'quote " back \\ new\nline ü ✓ 😀'
        return ({"revenue": True, "count": big_int, "ratio": -0.125, "empty": "", "text": text,
                 "nested": {"x": {"y": 1}}, "list": [], "nothing": None},
                None, {"revenue": True, "count": big_int, "ratio": -0.125, "empty": "", "text": text})
    if k == 6:
        return None, None, {}
    return ({"value": 0, "big": 1.5e300, "neg": -42, "tiny": 2.5e-8},
            0, {"big": 1.5e300, "neg": -42, "tiny": 2.5e-8})


class Traffic:
    """Calls in a neutral form ("method", {camelCase args}) and, by event_id, what must be stored."""

    def __init__(self, tag, source, limited, precision, seed):
        self.tag, self.source, self.limited, self.precision = tag, source, limited, precision
        self.rng = random.Random(f"{seed}-{tag}")
        self.expect = {}        # event_id -> expected row
        self.not_stored = set()  # ids of skipped calls
        self.bad_id = None
        self.main, self.resend, self.rate = [], [], []
        self.skipped_main = self.skipped_rate = 0

    def want(self, event_id, table, ts, **fields):
        self.expect[event_id] = dict(table=table, ts=micros(ts) // self.precision * self.precision,
                                     **fields)


class SegmentTraffic(Traffic):
    """For segment-python, rudder-python and segment-node: the same Segment calls."""

    def build(self):
        tag, rng, calls = self.tag, self.rng, []
        big_int = 2**53 + 1 if self.tag != "segment-node" else 2**53 - 1   # JS numbers are doubles
        for i in range(N_TRACK):
            mid = f"{tag}-t-{i:04d}"
            user = None if i % 5 == 0 else f"{tag}-user-{i % 41}"
            anon = f"{tag}-anon-{i % 13}" if user is None or i % 3 == 0 else None
            t = stamp(rng, i)
            name = TRACK_NAMES[i % len(TRACK_NAMES)]
            props, value, flat = properties_case(i, big_int)
            args = {"event": name, "messageId": mid, "timestamp": t, "userId": user, "anonymousId": anon}
            if props is not None:
                args["properties"] = props
            calls.append(("track", args))
            self.want(mid, "conversions", t, user_id=user or anon, name=name, value=value,
                      props=flat, source=self.source)
        for i in range(N_EXPOSURE):
            mid = f"{tag}-x-{i:03d}"
            user = None if i % 4 == 1 else f"{tag}-user-{i % 41}"
            anon = f"{tag}-anon-{i % 13}" if user is None or i % 3 == 0 else None
            t = stamp(rng, i + 1)
            variation = i % 2 if i % 5 == 0 else ["control", "treatment"][i % 2]
            props = {"experimentId": f"{tag}-exp-{i % 3}", "variationId": variation,
                     "experimentName": "Checkout test", "inExperiment": True, "featureId": None,
                     "details": {"k": 1}}
            unit = ("user_id", user or anon)
            if i % 2 == 0:
                props.update(hashAttribute="device_id", hashValue=f"{tag}-device-{i}")
                unit = ("device_id", f"{tag}-device-{i}")
            calls.append(("track", {"event": "Experiment Viewed", "messageId": mid, "timestamp": t,
                                    "userId": user, "anonymousId": anon, "properties": props}))
            self.want(mid, "assignments", t, user_id=user or anon, experiment=f"{tag}-exp-{i % 3}",
                      variant=str(variation), unit_attribute=unit[0], unit_id=unit[1],
                      props={"experimentName": "Checkout test", "inExperiment": True},
                      source=self.source)
        for i, call in enumerate(self.skipped_calls("s", 14)):
            calls.append(call)
        self.skipped_main = 14
        rng.shuffle(calls)
        # One bad event, in the middle of a batch.
        self.bad_id = f"{tag}-bad"
        bad_name = "N" * (200 if BREAK == "rejected" else 300)
        calls.insert(len(calls) // 2, ("track", {"event": bad_name, "messageId": self.bad_id,
                                                 "userId": f"{tag}-user-1", "timestamp": stamp(rng, 0),
                                                 "properties": {"revenue": 1}}))
        if BREAK == "stray" and tag == "segment-python":   # a second bad event, not expected
            calls.insert(10, ("track", {"event": "Many Props", "messageId": f"{tag}-stray",
                                        "userId": "u", "properties": {f"p{k}": k for k in range(70)}}))
        if BREAK == "skipped":   # a stored call taken for a skipped one
            self.not_stored.add(f"{tag}-t-0001")
        self.main = calls
        # Resent ids, other content.
        for i in range(0, N_TRACK, N_TRACK // N_RESENT_TRACK):
            mid = f"{tag}-t-{i:04d}" + ("-again" if BREAK == "dedup" else "")
            self.resend.append(("track", {"event": "Resent", "messageId": mid, "userId": "resender",
                                          "timestamp": NOW, "properties": {"revenue": 999}}))
        for i in range(N_RESENT_EXPOSURE):
            mid = f"{tag}-x-{i:03d}" + ("-again" if BREAK == "dedup" else "")
            self.resend.append(("track", {"event": "Experiment Viewed", "messageId": mid,
                                          "userId": "resender", "timestamp": NOW, "properties":
                                          {"experimentId": "resent", "variationId": "resent"}}))
        # The rate-limited run.
        for i in range(N_RATE):
            mid = f"{tag}-r-{i:04d}"
            t = stamp(rng, i)
            self.rate.append(("track", {"event": "Rate Test", "messageId": mid, "timestamp": t,
                                        "userId": f"{tag}-ru-{i % 17}", "properties": {"i": i}}))
            self.want(mid, "conversions", t, user_id=f"{tag}-ru-{i % 17}", name="Rate Test",
                      value=None, props={"i": i}, source=self.limited)
        if BREAK == "dedup":   # an accepted id again, during the 429s
            self.rate.append(("track", {"event": "Again", "messageId": f"{tag}-t-0000", "userId": "u"}))
        for k, call in enumerate(self.skipped_calls("rs", 6)):
            self.rate.insert(60 * k + 30, call)
        self.skipped_rate = 6
        return self

    def skipped_calls(self, kind, n):
        out = []
        for i in range(n):
            mid, user = f"{self.tag}-{kind}-{i:02d}", f"{self.tag}-user-{i}"
            self.not_stored.add(mid)
            base = {"messageId": mid, "userId": user, "timestamp": NOW}
            method = ["identify", "page", "screen", "group", "alias"][i % 5]
            extra = {"identify": {"traits": {"plan": "pro", "email": "a@example.com"}},
                     "page": {"name": "Home", "properties": {"path": "/", "revenue": 5}},
                     "screen": {"name": "Main", "properties": {"value": 1}},
                     "group": {"groupId": "group-1", "traits": {"size": 10}},
                     "alias": {"previousId": f"{self.tag}-anon-{i}"}}[method]
            out.append((method, dict(base, **extra)))
        return out


class PosthogTraffic(Traffic):
    def build(self):
        rng, calls = self.rng, []
        for i in range(N_TRACK):
            u = str(uuid.uuid5(PH_NS, f"t-{i}"))
            user = f"ph-user-{i % 41}"
            t = stamp(rng, i)
            name = TRACK_NAMES[i % len(TRACK_NAMES)]
            props, value, flat = properties_case(i, 2**53 + 1)
            args = {"distinct_id": user, "timestamp": t, "uuid": u}
            if props is not None:
                args["properties"] = props
            calls.append(("capture", name, args))
            self.want(u, "conversions", t, user_id=user, name=name, value=value, props=flat,
                      source=self.source)
        for i in range(N_EXPOSURE):
            u = str(uuid.uuid5(PH_NS, f"x-{i}"))
            user = f"ph-user-{i % 41}"
            t = stamp(rng, i + 1)
            response = True if i % 3 == 0 else ["control", "test"][i % 2]
            calls.append(("capture", "$feature_flag_called", {
                "distinct_id": user, "timestamp": t, "uuid": u,
                "properties": {"$feature_flag": f"ph-flag-{i % 3}", "$feature_flag_response": response,
                               "flag_source": "server", "details": {"k": 1}}}))
            self.want(u, "assignments", t, user_id=user, experiment=f"ph-flag-{i % 3}",
                      variant="true" if response is True else response, unit_attribute="user_id",
                      unit_id=user, props={"flag_source": "server"}, source=self.source)
        calls += self.skipped_calls("s", 14)
        self.skipped_main = 14
        rng.shuffle(calls)
        self.bad_id = str(uuid.uuid5(PH_NS, "bad"))
        bad_name = "N" * (200 if BREAK == "rejected" else 300)
        calls.insert(len(calls) // 2, ("capture", bad_name, {
            "distinct_id": "ph-user-1", "timestamp": stamp(rng, 0), "uuid": self.bad_id,
            "properties": {"revenue": 1}}))
        self.main = calls
        for i in range(0, N_TRACK, N_TRACK // N_RESENT_TRACK):
            u = str(uuid.uuid5(PH_NS, f"t-{i}" + ("-again" if BREAK == "dedup" else "")))
            self.resend.append(("capture", "Resent", {"distinct_id": "resender", "uuid": u,
                                                      "properties": {"revenue": 999}}))
        for i in range(N_RESENT_EXPOSURE):
            u = str(uuid.uuid5(PH_NS, f"x-{i}" + ("-again" if BREAK == "dedup" else "")))
            self.resend.append(("capture", "$feature_flag_called", {
                "distinct_id": "resender", "uuid": u,
                "properties": {"$feature_flag": "resent", "$feature_flag_response": "resent"}}))
        for i in range(N_RATE):
            u = str(uuid.uuid5(PH_NS, f"r-{i}"))
            t = stamp(rng, i)
            self.rate.append(("capture", "Rate Test", {"distinct_id": f"ph-ru-{i % 17}", "uuid": u,
                                                       "timestamp": t, "properties": {"i": i}}))
            self.want(u, "conversions", t, user_id=f"ph-ru-{i % 17}", name="Rate Test", value=None,
                      props={"i": i}, source=self.limited)
        for k in range(4):
            u = str(uuid.uuid5(PH_NS, f"rs-{k}"))
            self.not_stored.add(u)
            self.rate.insert(80 * k + 40, ("capture", "$pageview", {
                "distinct_id": "ph-user-1", "uuid": u, "properties": {"$current_url": "https://x.test/"}}))
        self.skipped_rate = 4
        return self

    def skipped_calls(self, kind, n):
        out = []
        for i in range(n):
            u = str(uuid.uuid5(PH_NS, f"{kind}-{i}"))
            self.not_stored.add(u)
            user = f"ph-user-{i}"
            if i % 7 < 3:
                out.append(("capture", "$pageview", {"distinct_id": user, "uuid": u, "properties": {
                    "$current_url": f"https://shop.test/p/{i}", "value": 3}}))
            elif i % 7 < 5:
                out.append(("capture", "$identify", {"distinct_id": user, "uuid": u, "properties": {
                    "$set": {"email": "a@example.com"}}}))
            elif i % 7 == 5:
                out.append(("set", None, {"distinct_id": user, "uuid": u, "properties": {"plan": "pro"}}))
            else:
                out.append(("alias", None, {"previous_id": f"ph-anon-{i}", "distinct_id": user, "uuid": u}))
        return out


# ---- driving the SDKs ---------------------------------------------------------------------------

SNAKE = {"userId": "user_id", "anonymousId": "anonymous_id", "messageId": "message_id",
         "groupId": "group_id", "previousId": "previous_id"}


def bounded(label, fn, timeout=FLUSH_SECS):
    """Run fn in a thread; False (and a FAIL) if it is not done within timeout."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            result["error"] = repr(e)

    th = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    th.start()
    th.join(timeout)
    if th.is_alive():
        check(f"{label} finishes within {timeout} s", False, "still running")
        return False
    if "error" in result:
        check(f"{label} raises nothing", False, result["error"])
        return False
    result["secs"] = time.monotonic() - start
    return result


class PythonSegmentSdk:
    """segment-analytics-python or rudder-sdk-python: the same call signatures."""

    def __init__(self, cls, key, base, **options):
        self.errors = []
        self.client = cls(key, host=base, upload_interval=0.05,
                          on_error=lambda e, batch: self.errors.append(f"{e!r} ({len(batch)} calls)"),
                          **options)

    def send(self, calls):
        for method, args in calls:
            kwargs = {SNAKE.get(k, k): v for k, v in args.items() if v is not None}
            getattr(self.client, method)(**kwargs)
        self.client.flush()

    def close(self):
        self.client.shutdown()


class PosthogSdk:
    def __init__(self, key, base, **options):
        self.errors = []
        self.client = Posthog(key, host=base, flush_interval=0.05, capture_mode="v0",
                              enable_exception_autocapture=False,
                              on_error=lambda e, batch: self.errors.append(f"{e!r} ({len(batch)} calls)"),
                              **options)

    def send(self, calls):
        for method, event, kwargs in calls:
            if method == "capture":
                self.client.capture(event, **kwargs)
            else:
                getattr(self.client, method)(**kwargs)
        self.client.flush(timeout_seconds=FLUSH_SECS - 5)

    def close(self):
        self.client.shutdown()


class NodeSdk:
    """segment_node.mjs in a subprocess: one phase per send(), metrics readable in between."""

    def __init__(self, key, base, phases, work, name, **settings):
        def js(args):
            out = {}
            for k, v in args.items():
                if v is None:
                    continue
                if isinstance(v, dt.datetime):
                    iso = v.isoformat(timespec="milliseconds")
                    v = iso if v.utcoffset() else {"$date": iso}
                out[k] = v
            return out
        spec = {"host": base, "writeKey": key, "settings": settings,
                "flushTimeoutMs": (FLUSH_SECS - 5) * 1000, "deadlineMs": DEADLINE_SECS * 1000,
                "phases": [[{"method": m, "args": js(a)} for m, a in phase] for phase in phases]}
        path = work / f"{name}.json"
        path.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(["node", str(NODE_HELPER), str(path)], cwd=HERE,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        STARTED.append(self.proc)
        self.errors = []
        self.report = {}
        self.phase = 0

    def send(self, _calls=None):
        """Let the helper run its next phase and wait for its report line."""
        if self.phase > 0:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        self.phase += 1
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node helper ended: {self.proc.stderr.read()[-2000:]}")
        self.report = json.loads(line)
        self.errors = self.report.get("errors", [])
        if self.report.get("done") is False:
            raise RuntimeError(f"node helper: {self.report}")

    def close(self):
        self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "did not exit (killed)"
        if code != 0:
            raise RuntimeError(f"node helper exit {code}: {self.proc.stderr.read()[-2000:]}")


def make_sdk(tag, limited, base, work, traffic):
    source = SDKS[tag][1 if limited else 0]
    key = KEY[source]
    no_retry = BREAK == "retry" and limited
    if tag == "segment-python":
        return PythonSegmentSdk(SegmentClient, key, base, gzip=not limited, upload_size=100,
                                max_retries=0 if no_retry else 3, max_total_backoff_duration=20,
                                max_rate_limit_duration=0 if no_retry else 60)
    if tag == "rudder-python":
        # rudder ignores Retry-After; its backoff is uniform(0, 2^n) s: enough tries to get through.
        return PythonSegmentSdk(RudderClient, key, base, upload_size=100,
                                max_retries=0 if no_retry else 12)
    if tag == "posthog-python":
        return PosthogSdk(key, base, gzip=not limited, flush_at=100,
                          max_retries=0 if no_retry else (8 if limited else 2))
    phases = [traffic.rate] if limited else [traffic.main, traffic.resend]
    settings = {"flushAt": 100 if limited else 40, "flushInterval": 200,
                **({"path": "/v1/nowhere"} if BREAK == "stray" and not limited else {}),
                "maxRetries": 0 if no_retry else 5, "maxTotalBackoffDuration": 20,
                "maxRateLimitDuration": 0 if no_retry else 60}
    return NodeSdk(key, base, phases, work, f"node-{'limited' if limited else 'main'}", **settings)


# ---- the lake ------------------------------------------------------------------------------------

def read_lake(data):
    con = duckdb.connect()
    scan = lambda t: (f"read_parquet('{data}/{t}/**/*.parquet', hive_partitioning = true, "
                      "union_by_name = true, hive_types = {'date': DATE, 'hour': INTEGER})")
    rows = {}
    queries = {
        "conversions": "SELECT event_id, epoch_us(ts), user_id, name, value, props, source, "
                       "ts_out_of_bounds FROM {}",
        "assignments": "SELECT event_id, epoch_us(ts), user_id, experiment, variant, unit_attribute, "
                       "unit_id, props, source, ts_out_of_bounds FROM {}",
        "rejected": "SELECT event_id, code, message, raw, source FROM {}",
    }
    for table, sql in queries.items():
        if not list((data / table).glob("**/*.parquet")):
            rows[table] = []
            continue
        cur = con.execute(sql.format(scan(table)))
        names = [d[0] for d in cur.description]
        rows[table] = [dict(zip(names, r)) for r in cur.fetchall()]
    return rows


def same_json(a, b):
    """Equal with JSON types kept apart (True is not 1; 3 and 3.0 are the same number)."""
    def kind(v):
        if isinstance(v, bool):
            return "bool"
        return "num" if isinstance(v, (int, float)) else type(v).__name__
    if kind(a) != kind(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return a == b


def row_diffs(event_id, row, want, posthog):
    diffs = []
    fields = ["user_id", "source"] + (["name", "value"] if want["table"] == "conversions"
                                      else ["experiment", "variant", "unit_attribute", "unit_id"])
    for f in fields:
        if not same_json(row[f], want[f]):
            diffs.append(f"{f} {row[f]!r}, want {want[f]!r}")
    if row["epoch_us(ts)"] != want["ts"]:
        diffs.append(f"ts {row['epoch_us(ts)']}, want {want['ts']} (µs since epoch)")
    if row["ts_out_of_bounds"] is not False:
        diffs.append(f"ts_out_of_bounds {row['ts_out_of_bounds']!r}")
    props = json.loads(row["props"]) if row["props"] is not None else None
    if posthog:
        ours = {k: v for k, v in (props or {}).items() if not k.startswith("$")}
        if not same_json(ours, want["props"]):
            diffs.append(f"props {ours!r} (without $ keys), want {want['props']!r}")
        if (props or {}).get("$lib") != "posthog-python":
            diffs.append(f"props $lib {(props or {}).get('$lib')!r}, want 'posthog-python'")
    elif not same_json(props, want["props"] or None):
        diffs.append(f"props {row['props']!r}, want {json.dumps(want['props'] or None)}")
    return [f"{event_id}: {d}" for d in diffs]


def compare(label, traffic, lake, ids):
    """Every id in ids is exactly one row of its table with the expected fields."""
    problems = []
    for event_id in ids:
        want = traffic.expect[event_id]
        found = lake[want["table"]].get(event_id, [])
        if len(found) != 1:
            problems.append(f"{event_id}: {len(found)} rows in {want['table']}")
            continue
        problems += row_diffs(event_id, found[0], want, traffic.tag == "posthog-python")
    check(label, not problems, f"{len(problems)} problems, e.g. " + "; ".join(problems[:4]))


# ---- the run -------------------------------------------------------------------------------------

def main():
    global BREAK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary", help="the gateway binary")
    ap.add_argument("--break", dest="breaks", choices=["mapping", "dedup", "ratelimit", "retry",
                                                        "rejected", "skipped", "stray"],
                    help="make one deliberate mistake, to see the check fail")
    args = ap.parse_args()
    BREAK = args.breaks
    logging.disable(logging.CRITICAL)   # SDKs (and backoff) log each retry; the checks report
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="analytics-check-"))
    gw = Gateway(args.binary, work)

    def watchdog():
        print(f"FAIL the run is past its {DEADLINE_SECS} s deadline; the lake is kept in {work}", flush=True)
        end_started()
        os._exit(1)
    timer = threading.Timer(DEADLINE_SECS, watchdog)
    timer.daemon = True
    timer.start()

    traffic = {}
    for tag, (source, limited, precision) in SDKS.items():
        cls = PosthogTraffic if tag == "posthog-python" else SegmentTraffic
        traffic[tag] = cls(tag, source, limited, precision, SEED).build()
    sdk_errors = {}

    # 1, 2, 4: the main traffic, then the resent ids in a later flush, one SDK after the other.
    m_start = gw.metrics()
    dup = {}
    for tag, tr in traffic.items():
        sdk = make_sdk(tag, False, gw.base, work, tr)
        before = gw.metrics()
        ok = bounded(f"{tag}: main flush", lambda: sdk.send(tr.main))
        mid = gw.metrics()
        ok = ok and bounded(f"{tag}: resend flush", lambda: sdk.send(tr.resend))
        after = gw.metrics()
        ok = ok and bounded(f"{tag}: close", sdk.close, timeout=15)
        sdk_errors[tag] = list(sdk.errors)
        dup[tag] = (mid.dup() - before.dup(), after.dup() - mid.dup(), len(tr.resend))
    m_main = gw.metrics()
    for route in ("segment", "posthog"):
        sent = sum(tr.skipped_main for tag, tr in traffic.items() if ROUTE[tag] == route)
        want = sent + (1 if BREAK == "skipped" else 0)
        got = m_main.skipped(route) - m_start.skipped(route)
        check(f'{route} route: gateway_sdk_calls_skipped_total{{route="{route}"}} counts the {sent} '
              f"identify/page/screen/group/alias (PostHog: $pageview, $identify, $set, $create_alias) "
              f"calls sent", got == want, f"rose by {got:g}, want {want}")
    for tag, (during_main, during_resend, resent) in dup.items():
        check(f"{tag}: {resent} message ids resent in a later flush are {resent} duplicates "
              f"(gateway_events_duplicate_total), none during the first flush",
              during_main == 0 and during_resend == resent,
              f"rose by {during_main:g} in the first flush, {during_resend:g} in the resend")

    # 3: the rate-limited keys. Two at a time: one SDK per route, or node (which counts its own).
    rate = {}
    for group in (("segment-python", "posthog-python"), ("rudder-python", "segment-node")):
        before = gw.metrics()
        results = {}

        def run(tag):
            sdk = make_sdk(tag, True, gw.base, work, traffic[tag])
            res = bounded(f"{tag}: rate-limited flush", lambda: sdk.send(traffic[tag].rate))
            bounded(f"{tag}: rate-limited close", sdk.close, timeout=15)
            results[tag] = (res, sdk)
        threads = [threading.Thread(target=run, args=(t,)) for t in group]
        for th in threads:
            th.start()
        for th in threads:
            th.join(FLUSH_SECS + 20)
        after = gw.metrics()
        for tag in group:
            res, sdk = results.get(tag, (None, None))
            route = ROUTE[tag]
            route_429 = after.status(route, 429) - before.status(route, 429)
            if tag == "segment-node" and sdk is not None:
                own = sdk.report.get("statuses", {}).get("429", 0)
                waits = sdk.report.get("retryAfter", [])
                with_header = sum(1 for w in waits if w and w.isdigit() and int(w) >= 1)
                rate[tag] = (own if with_header == own else 0,
                             f"{own} counted by the SDK itself, {with_header} of them with Retry-After "
                             f"{sorted(set(waits), key=str)} ({route_429:g} on the route)", sdk)
            elif tag == "rudder-python":
                node = results.get("segment-node", (None, None))[1]
                node_429 = node.report.get("statuses", {}).get("429", 0) if node else 0
                rate[tag] = (route_429 - node_429, f"{route_429 - node_429:g} on the route "
                             f"({route_429:g} less node's {node_429})", sdk)
            else:
                rate[tag] = (route_429, f"{route_429:g} on the route", sdk)
            rate[tag] += (res["secs"] if res else None,)
            sdk_errors[tag] += list(sdk.errors) if sdk else ["the rate-limited run did not finish"]
    m_end = gw.metrics()
    for tag in SDKS:
        n429, how, _, secs = rate[tag]
        took = f", took {secs:.1f} s" if secs is not None else ""
        check(f"{tag}: the rate-limited key answered 429s ({how}{took})", n429 >= 1, f"no 429 ({how})")
    dup_rate = m_end.dup() - m_main.dup()
    check("no accepted batch was resent during the 429s (gateway_events_duplicate_total did not move)",
          dup_rate == 0, f"rose by {dup_rate:g}")
    for route in ("segment", "posthog"):
        sent = sum(tr.skipped_rate for tag, tr in traffic.items() if ROUTE[tag] == route)
        got = m_end.skipped(route) - m_main.skipped(route)
        refused = m_end.status(route, 429) - m_main.status(route, 429)
        check(f"{route} route: the {sent} skipped calls in rate-limited batches are counted once "
              f"each, though their batches met {refused:g} 429s", got == sent, f"the metric rose by {got:g}")

    allowed = {("segment", "200"), ("segment", "429"), ("posthog", "200"), ("posthog", "429"),
               ("metrics", "200")}
    odd = [f'{ls.get("route")} {ls.get("status")}: {v:g}' for n, ls, v in m_end.series
           if n == "gateway_http_requests_total" and v and (ls.get("route"), ls.get("status")) not in allowed]
    check("the SDKs made only SDK-route requests, all answered 200 or 429", not odd, odd)

    gw.finish()
    timer.cancel()
    end_started()   # a node helper that did not exit by itself (already reported)

    # The lake.
    raw = read_lake(gw.data)
    lake = {}
    for table in ("conversions", "assignments"):
        lake[table] = {}
        for r in raw[table]:
            lake[table].setdefault(r["event_id"], []).append(r)
    for tag, tr in traffic.items():
        main_ids = [i for i, w in tr.expect.items() if w["source"] == tr.source]
        conv = [i for i in main_ids if tr.expect[i]["table"] == "conversions"]
        expo = [i for i in main_ids if tr.expect[i]["table"] == "assignments"]
        compare(f"{tag}: {len(conv)} track calls are {len(conv)} conversions rows with the mapped "
                f"fields (resent ids keep their first content)", tr, lake, conv)
        compare(f"{tag}: {len(expo)} exposures are {len(expo)} assignments rows with experiment, "
                f"variant and unit", tr, lake, expo)
        stored = sorted(i for i in tr.not_stored if i in lake["conversions"] or i in lake["assignments"])
        check(f"{tag}: none of the {len(tr.not_stored)} identify/page/... calls is stored", not stored,
              stored[:5])
        rate_ids = [i for i, w in tr.expect.items() if w["source"] == tr.limited]
        compare(f"{tag}: after the 429s every one of the {len(rate_ids)} rate-limited events is in the "
                f"lake exactly once", tr, lake, rate_ids)
        check(f"{tag}: the SDK reported no error", not sdk_errors[tag], sdk_errors[tag][:3])
        bad = [r for r in raw["rejected"] if r["event_id"] == tr.bad_id]
        ok = (len(bad) == 1 and bad[0]["code"] == "invalid_value" and "name" in bad[0]["message"]
              and "300" in bad[0]["message"] and bad[0]["source"] == tr.source
              and "N" * 300 in bad[0]["raw"])
        landed = tr.bad_id in lake["conversions"]
        check(f"{tag}: the 300-byte event name is in the rejected table "
              f"({bad[0]['code'] + ': ' + bad[0]['message'] if bad else 'missing'}), its batch landed",
              ok and not landed, f"rejected rows {bad}, in conversions: {landed}")
    expected_ids = {i for tr in traffic.values() for i in tr.expect}
    for table in ("conversions", "assignments"):
        extra = sorted(set(lake[table]) - expected_ids)
        check(f"the {table} table holds nothing else", not extra, f"{len(extra)} other ids, e.g. {extra[:4]}")
    others = [r for r in raw["rejected"] if r["event_id"] not in {tr.bad_id for tr in traffic.values()}]
    check("the rejected table holds nothing else", not others, others[:2])

    elapsed = time.monotonic() - started
    if CHECKS["failed"]:
        print(f"the lake and the gateway's log are kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"took {elapsed:.1f} s")
    print(f"{CHECKS['passed']} passed, {CHECKS['failed']} failed")
    return 1 if CHECKS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
