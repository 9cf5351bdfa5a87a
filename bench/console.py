#!/usr/bin/env python3
"""Benchmark: server time of every console page with many spans stored.

A benchmark, not a test: it asserts nothing about time. In one run:

1. fill a fresh DuckDB store with ``--spans`` spans of the data set of ``bench/telemetry.py``
   (10 services, traces of 10 spans spread over the last hour, 2 % failing). With ``--load
   sample`` (the default) ``--sample`` spans (200 000) go through the real OTLP receiver process
   and :mod:`grow` then copies them, with fresh ids, moved within the hour and with durations
   scaled per trace, in bulk SQL inside the store's DuckDB engine, up to ``--spans``, filling
   the trace-id table, minute rollup and service-map tables the way the receiver's inserts do
   (checked: the counts must add up). ``--load receiver`` sends every span through the receiver
   (10 M spans take 15-20 minutes at the ~8-14 k spans/s it reaches on a busy 2-core machine);
   ``--store`` copies a store an earlier ``--dir`` run filled instead. The rollup and edge rows
   are then compacted as the telemetry service does (:func:`grow.compact`), and every span and
   derived row is moved forward by whole minutes so that the data ends when the timing starts;
2. serve the platform API on a Unix socket in its own process: the observe routes
   (``apm_routes`` over that store, ``rules_routes`` with two deploy markers, a probe and an
   alert rule) plus the platform's app routes answered from fixed JSON — one app per service —
   because the store is what grows with traffic; the platform's reads are small SQLite lookups;
3. start the console as its own process (``python -m noops.console``) reading that socket;
4. GET every page ``--rounds`` times after a warm-up, one at a time, on loopback, with the
   window ``since=1h`` (every stored span is in it: the worst case) and the default ``15m``.

Fragments the browser loads after a page (indented: an overview row's sparkline, the traces
page's correlations) are timed like pages, and so is the traces page searching for one user's
requests by attribute (``enduser.id``, a value about one span in 100 000 carries: the store
reads the attribute maps of every entry span of the service in the window).

Printed per page: median and max server time (request sent → last byte, over loopback, so it
includes the console, the API and the store), the target (300 ms) and PASS/MISS, and the peer:
the slowest single API read the page makes, timed directly against the API socket in the same
run; ``ratio`` = page / that read (what the console adds on top of its slowest read).

Usage::

    python bench/console.py [--spans 10000000] [--rounds 5] [--load sample|receiver]
                            [--sample 200000] [--store STORE] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grow import compact, grow, shift_to_now
from telemetry import (
    HOUR_NS,
    SERVICES,
    SPANS_PER_TRACE,
    Sender,
    _checkpoint,
    _free_port,
    _start_receiver,
)

TARGET_MS = 300.0
APP = SERVICES[1]  # svc-web: called by svc-gateway, calls others


def ingest(spans: int, workdir: Path, t0_ns: int) -> tuple[Path, float]:
    store = workdir / "telemetry.duckdb"
    wal = workdir / "wal"
    port = _free_port()
    proc = _start_receiver("duckdb", store, wal, port)
    started = time.perf_counter()
    try:
        sender = Sender(port, spans, 2000, 4, t0_ns)
        sender.run()
        while _checkpoint(wal) < sender.acked:
            if proc.poll() is not None:
                raise SystemExit(f"the receiver exited with {proc.returncode}")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(600)
    return store, time.perf_counter() - started


def load(spans: int, sample: int, workdir: Path, reuse: Path | None = None) -> Path:
    """Fill the store: all ``spans`` through the receiver (``sample`` = 0), or ``sample`` spans
    through the receiver, then copies in bulk SQL (:mod:`grow`) up to ``spans``; or copy the
    store ``reuse`` filled by an earlier run. Then move the data so that it ends now."""
    store = _fill(spans, sample, workdir, reuse)
    done = compact(store)
    rows = ", ".join(f"{t} {done['before'][t]:,} -> {n:,}" for t, n in done["after"].items())
    print(f"compacted the minute rollups as the telemetry service does in "
          f"{done['seconds']:.0f} s: {rows}", flush=True)
    minutes, stored = shift_to_now(store)
    print(f"{stored:,} spans stored; every span and derived row moved forward by {minutes} min "
          "so that the data ends now", flush=True)
    return store


def _fill(spans: int, sample: int, workdir: Path, reuse: Path | None) -> Path:
    if reuse is not None:
        store = workdir / "telemetry.duckdb"
        shutil.copyfile(reuse, store)
        print(f"reusing the store {reuse} (copied to {store})", flush=True)
        return store
    t0_ns = (time.time_ns() - HOUR_NS + 60 * 10**9) // 10**9 * 10**9
    copies = spans // sample if sample else 1
    if copies < 2:
        store, took = ingest(spans, workdir, t0_ns)
        print(f"loaded {spans:,} spans through the OTLP receiver in {took:.0f} s", flush=True)
        return store
    store, took = ingest(sample, workdir, t0_ns)
    print(f"loaded {sample:,} spans through the OTLP receiver in {took:.0f} s", flush=True)
    done = grow(store, copies, t0_ns, HOUR_NS, sample // SPANS_PER_TRACE)
    rows = ", ".join(f"{t} {done['before'][t]:,} -> {n:,}" for t, n in done["after"].items())
    print(f"grown x{copies} to {sample * copies:,} spans in bulk SQL (bench/grow.py: fresh ids, "
          f"traces moved within the hour, durations x0.8-1.2 per trace, receiver-sized batches of "
          f"{done['batch_spans']} spans) in {done['seconds']:.0f} s; {rows}", flush=True)
    return store


def serve_api(store_path: Path, sock: Path, rules_db: Path) -> None:
    """The API process (``--serve-api``): observe routes over the store, app routes from JSON."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from noops.observe.alerts import Alerts
    from noops.observe.api import apm_routes
    from noops.observe.markers import DeployMarkers
    from noops.observe.probes import Probes
    from noops.observe.rules_api import rules_routes
    from noops.observe.store import DuckDBStore

    store = DuckDBStore(store_path)
    markers, probes = DeployMarkers(rules_db, store), Probes(rules_db, store)
    alerts = Alerts(rules_db, store, probes)
    now = time.time()
    if not markers.list(service=APP, since=None, limit=5):
        markers.record(APP, "v1", at=now - 2400, description="first deploy")
        markers.record(APP, "v2", at=now - 900, description="second deploy")
        probes.add("http://127.0.0.1:9/", name="nothing listens here", app=APP)
        alerts.add("error_rate", APP, threshold=1, window="15m", name="web errors")
    created = "2026-01-01T00:00:00+00:00"

    def release(app: str, version: int) -> dict[str, Any]:
        return {"app": app, "version": version, "image": f"{app}:latest", "digest": "sha256:" + "0" * 64,
                "config_version": 1, "formation": {"web": 1}, "description": "",
                "status": "active" if version == 2 else "superseded", "created_at": created}

    async def apps(_: Request) -> Response:
        return JSONResponse([{"name": s, "release": release(s, 2), "instances": 1, "ready": 1,
                              "url": f"https://{s}.localhost:8443/"} for s in SERVICES])

    async def app(request: Request) -> Response:
        name = request.path_params["app"]
        return JSONResponse({"name": name, "release": release(name, 2), "instances": [
            {"app": name, "release": 2, "process": "web", "index": 0, "instance": "i0",
             "state": "ready", "ready": True, "draining": False, "restarts": 0,
             "restart_times": [], "exits": [], "last_check": None, "started_at": now - 3600,
             "log_path": None}]})

    async def releases(request: Request) -> Response:
        name = request.path_params["app"]
        return JSONResponse([release(name, 2), release(name, 1)])

    async def config(_: Request) -> Response:
        return JSONResponse({"config": {"COLOR": "blue"}, "secrets": ["TOKEN"], "version": 1})

    async def ps(request: Request) -> Response:
        return JSONResponse(json.loads(bytes((await app(request)).body))["instances"])

    routes = [Route("/api/apps", apps), Route("/api/apps/{app}", app),
              Route("/api/apps/{app}/releases", releases), Route("/api/apps/{app}/config", config),
              Route("/api/apps/{app}/ps", ps), *apm_routes(store),
              *rules_routes(markers, probes, alerts)]
    uvicorn.run(Starlette(routes=routes), uds=str(sock), log_level="warning")
    for closable in (markers, alerts, probes, store):
        closable.close()


def _wait(check: Any, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            check()
            return
        except (httpx.HTTPError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.1)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed(client: httpx.Client, path: str) -> float:
    t0 = time.perf_counter()
    resp = client.get(path)
    resp.read()
    ms = (time.perf_counter() - t0) * 1000
    if resp.status_code != 200:
        raise SystemExit(f"GET {path}: {resp.status_code} {resp.text[:300]}")
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--load", choices=("sample", "receiver"), default="sample",
                    help="sample (default): --sample spans through the OTLP receiver, grown to "
                         "--spans in bulk SQL (bench/grow.py); receiver: every span through it")
    ap.add_argument("--sample", type=int, default=200_000,
                    help="spans ingested through the receiver before growing (default 200000)")
    ap.add_argument("--store", type=Path,
                    help="instead of loading, copy this store (a --dir run's telemetry.duckdb)")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve-api", nargs=3, type=Path, metavar=("STORE", "SOCK", "RULES_DB"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_api:
        serve_api(*args.serve_api)
        return 0
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="noops-bench-console-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.spans:,} spans, {args.rounds} rounds per page, {os.cpu_count()} cores, "
          f"work dir {workdir}", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    results: list[dict[str, Any]] = []
    try:
        store = load(args.spans, args.sample if args.load == "sample" else 0, workdir, args.store)
        print(f"load average before timing: {_loadavg()}", flush=True)
        sock = workdir / "api.sock"
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-api", str(store),
                                       str(sock), str(workdir / "rules.db")]))
        api = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://noops",
                           timeout=120)
        _wait(lambda: api.get("/api/apps").raise_for_status(), "the API", procs[-1])
        port = _free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "noops.console", "--api-socket",
                                       str(sock), "--listen", f"127.0.0.1:{port}"]))
        web = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        _wait(lambda: web.get("/healthz").raise_for_status(), "the console", procs[-1])
        slow = api.get(f"/api/apm/services/{APP}/slowest", params={"since": "1h", "limit": 1})
        trace_id = slow.json()[0]["trace_id"]
        # A search for one user's requests (a value ~1 in 100 000 spans carries): the
        # attribute maps of every entry span of the service in the window are read.
        entry = next(sp for sp in api.get(f"/api/traces/{trace_id}").json()["spans"]
                     if sp["service"] == APP and sp["kind"] == "Server")
        user = f"enduser.id={entry['attributes']['enduser.id']}"
        pages: list[tuple[str, str, list[str]]] = []
        for since in ("1h", "15m"):
            s = f"since={since}"
            svc = f"/api/apm/services/{APP}"
            pages += [
                ("overview", f"/?{s}", [f"/api/apm/services?{s}", "/api/apps"]),
                ("  row sparkline", f"/apps/{APP}/spark?{s}", [f"{svc}/timeseries?{s}"]),
                ("app", f"/apps/{APP}?{s}", [f"{svc}/timeseries?{s}", f"/api/apm/services?{s}"]),
                ("traces", f"/traces?service={APP}&{s}", [f"{svc}/slowest?{s}&limit=1000",
                                                          f"/api/apm/services?{s}"]),
                ("  by attribute", f"/traces?service={APP}&{s}&attr={quote(user)}",
                 [f"{svc}/slowest?{s}&limit=1000&attr={quote(user)}"]),
                ("  correlations", f"/services/{APP}/correlations?{s}&slow_ms=100",
                 [f"{svc}/correlations?{s}&slow_ms=100&failed=1"]),
                ("service map", f"/map?{s}", [f"/api/apm/map?{s}"]),
            ]
        pages += [("trace", f"/traces/{trace_id}", [f"/api/traces/{trace_id}"]),
                  ("uptime & alerts", "/uptime", ["/api/alerts", "/api/probes"])]
        for name, path, reads in pages:
            timed(web, path)  # warm-up
            ms = [timed(web, path) for _ in range(args.rounds)]
            peer = max(statistics.median(timed(api, r) for _ in range(args.rounds)) for r in reads)
            results.append({"page": name, "path": path, "median_ms": statistics.median(ms),
                            "max_ms": max(ms), "slowest_read_ms": peer,
                            "ratio": statistics.median(ms) / peer if peer else None})
        api.close()
        web.close()
        load_after = _loadavg()
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"spans": args.spans, "load": args.load, "loadavg": load_after,
                          "pages": results}))
        return 0
    print(f"{'page':<18} {'path':<44} {'median':>9} {'max':>9} {'slowest read':>13} "
          f"{'ratio':>6}   target")
    for r in results:
        ok = "PASS" if r["median_ms"] <= TARGET_MS else "MISS"
        print(f"{r['page']:<18} {r['path'][:44]:<44} {r['median_ms']:>7.1f}ms {r['max_ms']:>7.1f}ms "
              f"{r['slowest_read_ms']:>11.1f}ms {r['ratio']:>5.2f}x   ≤ {TARGET_MS:.0f} ms {ok}")
    print(f"load average after timing: {load_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
