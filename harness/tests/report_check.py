#!/usr/bin/env python3
"""Checks that a harness report.html works offline and draws its charts, in headless Chromium.

    python3 harness/tests/report_check.py OUT_DIR/report.html [--keep-screenshot PATH]

Chromium opens the page as a file:// URL with every connection sent to a proxy on loopback
that records each request it gets (CONNECT included) and answers 502, loopback itself not
exempt (`<-loopback>`), and Chromium's own background traffic switched off (see
`screenshot`), so that a request the proxy sees is one the page made. The page must cause
none at all, and the screenshot Chromium takes must show the charts: pixels of the colours
the harness's SVGs draw with (the variant palette and the decision colours of svg.rs). Standard library only; exits non-zero with a
message on any failure and prints `N passed, 0 failed` when all checks pass.
"""

import argparse
import os
import shutil
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import zlib

# harness/src/report/svg.rs: COLORS, then the decision colours (regression, pass).
PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
REGRESSION, PASS = "#c44e52", "#55a868"
# Per-channel tolerance: anti-aliased edges blend with white, solid strokes do not.
TOLERANCE = 8
# A chart colour "drawn": this many pixels of it (a legend swatch alone is ~70).
MIN_PIXELS = 150
CHROMIUM_TIMEOUT_S = 90
# Tall enough for the verdict chart and the latency charts below the tables.
WINDOW = (1200, 3000)


class Recorder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.requests = []
        self.lock = threading.Lock()


class RecordingHandler(socketserver.StreamRequestHandler):
    """Records the request line (and Host) of whatever arrives, answers 502, closes."""

    timeout = 5

    def handle(self):
        line, host = "", ""
        try:
            line = self.rfile.readline(8192).decode("latin-1").strip()
            while True:
                header = self.rfile.readline(8192).decode("latin-1")
                if header in ("", "\r\n", "\n"):
                    break
                if header.lower().startswith("host:"):
                    host = header.split(":", 1)[1].strip()
        except OSError:
            pass
        with self.server.lock:
            self.server.requests.append(f"{line} (Host: {host})" if host else line or "<empty>")
        try:
            self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(chromium, report, png, proxy_port, profile_dir):
    # Chromium's own traffic is switched off, so that whatever reaches the proxy came from the
    # page: the network clock, the search engine's preconnect and its eligibility check, and
    # the Google account lookup (its URLs pointed at a dead loopback port, itself proxied).
    dead = "http://127.0.0.1:9"
    args = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile_dir}",
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-features=NetworkTimeServiceQuerying,PreconnectToSearch,AimEligibilityService",
        f"--gaia-url={dead}",
        f"--google-base-url={dead}",
        "--force-color-profile=srgb",
        "--hide-scrollbars",
        f"--screenshot={png}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "file://" + os.path.abspath(report),
    ]
    try:
        out = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise Failure(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s")
    if out.returncode != 0 or not os.path.exists(png):
        raise Failure(
            f"chromium exited {out.returncode} without a screenshot:\n{out.stdout}{out.stderr}"
        )


class Failure(Exception):
    pass


def decode_png(data):
    """(width, height, rows of RGB tuples) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Failure("the screenshot is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise Failure("PNG without IHDR")
    width, height, depth, color, _, _, interlace = header
    channels = {2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace != 0:
        raise Failure(f"unsupported PNG: depth {depth}, colour type {color}, interlace {interlace}")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        filt, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        unfilter(filt, line, prev, channels)
        rows.append(bytes(line))
        prev = line
    return width, height, rows, channels


def unfilter(filt, line, prev, bpp):
    n = len(line)
    if filt == 0:
        return
    if filt == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif filt == 2:
        for i in range(n):
            line[i] = (line[i] + prev[i]) & 0xFF
    elif filt == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif filt == 4:
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pred) & 0xFF
    else:
        raise Failure(f"PNG filter type {filt} is not one of 0-4")


def rgb(hex_colour):
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def colour_counts(rows, channels, colours):
    """Pixels within TOLERANCE of each colour, and pixels that are not near-white."""
    targets = [rgb(c) for c in colours]
    counts = dict.fromkeys(colours, 0)
    # A histogram first: a screenshot has few distinct colours, so each is compared once.
    histogram = {}
    for row in rows:
        for i in range(0, len(row), channels):
            px = row[i : i + 3]
            histogram[px] = histogram.get(px, 0) + 1
    inked = 0
    for px, n in histogram.items():
        r, g, b = px
        if min(r, g, b) < 240:
            inked += n
        for colour, (tr, tg, tb) in zip(colours, targets):
            if abs(r - tr) <= TOLERANCE and abs(g - tg) <= TOLERANCE and abs(b - tb) <= TOLERANCE:
                counts[colour] += n
    return counts, inked


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="path of a report.html")
    parser.add_argument("--keep-screenshot", help="also write the screenshot here")
    args = parser.parse_args()
    passed, failed = 0, 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok: {name}")
        else:
            failed += 1
            print(f"FAIL: {name}{': ' + detail if detail else ''}")

    if not os.path.isfile(args.report):
        print(f"FAIL: no such file {args.report}")
        return 1
    chromium = chromium_binary()
    if chromium is None:
        print("FAIL: chromium is not on PATH (apt-get install chromium)")
        return 1

    proxy = Recorder()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    port = proxy.server_address[1]
    with tempfile.TemporaryDirectory(prefix="report-check-") as tmp:
        png = os.path.join(tmp, "report.png")
        try:
            screenshot(chromium, args.report, png, port, os.path.join(tmp, "profile"))
            with open(png, "rb") as f:
                data = f.read()
            if args.keep_screenshot:
                shutil.copyfile(png, args.keep_screenshot)
            width, height, rows, channels = decode_png(data)
        except Failure as e:
            print(f"FAIL: {e}")
            print(f"{passed} passed, {failed + 1} failed")
            return 1
        finally:
            proxy.shutdown()
            proxy.server_close()

    with proxy.lock:
        seen = list(proxy.requests)
    check(
        "the page made no network request",
        not seen,
        f"the proxy got {len(seen)}:\n  " + "\n  ".join(seen),
    )
    counts, inked = colour_counts(rows, channels, PALETTE)
    print(f"screenshot {width}x{height}: {inked} inked pixels; chart colours " +
          ", ".join(f"{c} {n}" for c, n in counts.items()))
    check("the screenshot is not blank", inked >= 0.01 * width * height, f"{inked} inked pixels")
    drawn = [c for c, n in counts.items() if n >= MIN_PIXELS]
    variant_colours = [c for c in drawn if c not in (REGRESSION, PASS)]
    check(
        "the latency charts are drawn (two variant colours)",
        len(variant_colours) >= 2,
        f"colours with >= {MIN_PIXELS} px: {drawn}",
    )
    check(
        "the verdict chart is drawn (a decision colour)",
        REGRESSION in drawn or PASS in drawn,
        f"{REGRESSION}: {counts[REGRESSION]} px, {PASS}: {counts[PASS]} px",
    )
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
