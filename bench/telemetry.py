#!/usr/bin/env python3
"""Benchmark: OTLP/HTTP span ingest into DuckDB and into ClickHouse (chdb), then APM queries.

A benchmark, not a test: it asserts nothing about time. For each backend in the same run:

1. start the real receiver in its own process, ``python -m noops.observe.otlp --backend B
   --store S --wal W --port P`` on 127.0.0.1, with a fresh store and WAL;
2. generate ``--spans`` spans (1 span in 10 of ``--spans`` traces of 10 spans each: a server span
   at the entry service, three client→server hops to other services, a database call, a cache
   call and an internal span; 10 services with 5 endpoints each, ~10 attributes per span, one of
   them a user id out of 100 000, 2 % of traces failing at their deepest hop with the error
   propagated to the root) and POST them as ``application/x-protobuf`` export requests of
   ``--batch`` spans from ``--connections`` keep-alive connections (a 429/503 is retried after
   its ``Retry-After``);
3. wait until the WAL checkpoint reaches the last acknowledged request (everything stored);
4. stop the receiver (SIGTERM: the store is closed and checkpointed) and measure the store on disk;
5. open the store in this process and time ``endpoints(service)`` (p50/p95/p99 per endpoint of
   a service over the whole data set) for every service, and ``trace(id)`` for 100 known ids.

Printed per backend, each with its target and PASS/MISS:

* ingest spans/s per core = spans / CPU seconds (user+system, all threads, from /proc) the
  receiver process spent between the first request and the checkpoint that covers the last one;
  wall-clock spans/s is printed beside it;
* bytes per span on disk = size of the store / spans: the DuckDB file (and its log), or the
  active parts of the ClickHouse database (``system.parts``; the whole chdb data directory,
  with ClickHouse's system logs and merged-away parts, is printed beside it);
* percentile query: median and max over the services (3 rounds after a warm-up);
* trace by id: median and max over 100 ids (each must return its 10 spans).

Usage::

    python bench/telemetry.py [--spans 10000000] [--backend duckdb|clickhouse|both]
                              [--batch 2000] [--connections 4] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TARGET_SPANS_PER_CORE = 100_000
TARGET_BYTES_PER_SPAN = 40.0
TARGET_QUERY_MS = 300.0
TARGET_TRACE_MS = 50.0

SERVICES = [f"svc-{n}" for n in ("gateway", "web", "cart", "checkout", "payment", "catalog",
                                 "search", "users", "shipping", "email")]
ENDPOINTS = {s: [f"{m} /api/{s[4:]}/{r}" for m, r in zip(("GET", "GET", "POST", "PUT", "GET"),
             ("items", "items/{id}", "orders", "profile", "health"), strict=True)] for s in SERVICES}
SPANS_PER_TRACE = 10
USERS = 100_000
HOUR_NS = 3600 * 10**9

# placeholders patched per span (found in each serialized template)
_PH_TRACE, _PH_SPAN, _PH_PARENT = b"\xa1" * 16, b"\xb2" * 8, b"\xc3" * 8
_PH_START, _PH_END = 0x1122334455667788, 0x7766554433221100
_PH_USER = "u@@@@@@@@"


def _kv(key: str, value: str | int) -> KeyValue:
    v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field_no: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (field numbers < 16: one tag byte)."""
    return bytes(((field_no << 3) | 2,)) + _varint(len(payload)) + payload


@dataclass
class _Template:
    data: bytes
    offsets: tuple[int, int, int, int, int, int]  # trace, span, parent (-1), start, end, user


class SpanFactory:
    """Realistic traces as serialized OTLP protobuf, built from per-shape templates."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self._templates: dict[tuple[Any, ...], _Template] = {}
        self._resources = {s: self._resource(s) for s in SERVICES}
        self._scope = InstrumentationScope(name="opentelemetry.instrumentation.asgi",
                                           version="0.66b1").SerializeToString()

    @staticmethod
    def _resource(svc: str) -> bytes:
        attrs = [("service.name", svc), ("service.version", "2026.11.27-3"),
                 ("service.namespace", "shop"), ("service.instance.id", f"{svc}-7f9c4d-0"),
                 ("host.name", "node-1"), ("deployment.environment.name", "prod"),
                 ("telemetry.sdk.language", "python"), ("telemetry.sdk.name", "opentelemetry"),
                 ("telemetry.sdk.version", "1.45.2"), ("process.pid", 4242)]
        return Resource(attributes=[_kv(k, v) for k, v in attrs]).SerializeToString()

    def _template(self, key: tuple[Any, ...]) -> _Template:
        t = self._templates.get(key)
        if t is not None:
            return t
        role, svc, ep, peer, peer_ep, error = key
        method, route = ep.split(" ", 1)
        status = Status(code=Status.STATUS_CODE_ERROR, message="upstream failed") if error else Status()
        common = [("thread.name", "MainThread"), ("enduser.id", _PH_USER)]
        if role == "server":
            name, kind = ep, Span.SPAN_KIND_SERVER
            attrs = [("http.request.method", method), ("http.route", route),
                     ("url.path", route.replace("{id}", "42")), ("url.scheme", "http"),
                     ("http.response.status_code", 500 if error else 200),
                     ("server.address", f"{svc}.noops.local"), ("network.protocol.version", "1.1"),
                     ("user_agent.original", "python-httpx/0.28.1")]
        elif role == "client":
            name, kind = peer_ep.split(" ", 1)[0], Span.SPAN_KIND_CLIENT
            attrs = [("http.request.method", name), ("server.address", f"{peer}.noops.local"),
                     ("server.port", 8080), ("peer.service", peer),
                     ("url.full", f"http://{peer}.noops.local:8080{peer_ep.split(' ', 1)[1]}"),
                     ("http.response.status_code", 500 if error else 200),
                     ("network.protocol.version", "1.1"), ("noops.mtls", "true")]
        elif role == "db":
            name, kind = "SELECT shop.items", Span.SPAN_KIND_CLIENT
            attrs = [("db.system", "postgresql"), ("db.namespace", "shop"),
                     ("db.operation.name", "SELECT"), ("db.collection.name", "items"),
                     ("db.query.text", "SELECT id, name, price FROM items WHERE id = $1"),
                     ("server.address", "db.noops.local"), ("server.port", 5432),
                     ("network.peer.address", "10.0.0.5")]
        elif role == "cache":
            name, kind = "GET", Span.SPAN_KIND_CLIENT
            attrs = [("db.system", "redis"), ("db.operation.name", "GET"),
                     ("db.query.text", "GET cart:*"), ("server.address", "cache.noops.local"),
                     ("server.port", 6379), ("network.peer.address", "10.0.0.6"),
                     ("db.namespace", "0"), ("network.transport", "tcp")]
        else:
            name, kind = "render", Span.SPAN_KIND_INTERNAL
            attrs = [("code.function.name", "render"), ("code.file.path", "/app/views.py"),
                     ("code.line.number", 88), ("template.name", "items.html"),
                     ("cache.hit", "false"), ("items.count", 24), ("locale", "en-GB"),
                     ("feature.flag", "new-checkout")]
        span = Span(trace_id=_PH_TRACE, span_id=_PH_SPAN,
                    parent_span_id=b"" if role == "server" and peer == "" else _PH_PARENT,
                    name=name, kind=kind, start_time_unix_nano=_PH_START,
                    end_time_unix_nano=_PH_END, status=status,
                    attributes=[_kv(k, v) for k, v in attrs + common])
        data = span.SerializeToString()

        def find(ph: bytes) -> int:
            i = data.find(ph)
            if i >= 0:
                assert data.find(ph, i + 1) < 0, "placeholder is not unique"
            return i

        offs = (find(_PH_TRACE), find(_PH_SPAN), find(_PH_PARENT),
                find(struct.pack("<Q", _PH_START)), find(struct.pack("<Q", _PH_END)),
                find(_PH_USER.encode()) + 1)
        t = self._templates[key] = _Template(data, offs)
        return t

    def trace(self, start: int, out: dict[str, list[bytes]]) -> bytes:
        """Append one trace's 10 spans to ``out`` (by service); return its trace id."""
        rng = self.rng
        tid = rng.randbytes(16)
        ids = rng.randbytes(8 * SPANS_PER_TRACE)
        a, b, c, d = rng.sample(SERVICES, 4)
        ea, eb, ec, ed = (rng.choice(ENDPOINTS[s]) for s in (a, b, c, d))
        error = rng.random() < 0.02
        user = b"%08d" % rng.randrange(USERS)
        total = int(rng.lognormvariate(17.0, 0.6))  # ~24 ms median, long tail
        q = total // 10
        # (role, service, endpoint, peer, peer endpoint, parent index, start offset, duration)
        shape = (
            ("server", a, ea, "", "", -1, 0, total),
            ("client", a, ea, b, eb, 0, q, 3 * q),
            ("server", b, eb, "", "", 1, q + q // 4, 2 * q),
            ("db", b, eb, "", "", 2, q + q // 2, q),
            ("client", a, ea, c, ec, 0, 5 * q, 4 * q),
            ("server", c, ec, "", "", 4, 5 * q + q // 4, 3 * q),
            ("internal", c, ec, "", "", 5, 5 * q + q // 2, q // 2),
            ("client", c, ec, d, ed, 5, 6 * q + q // 2, 2 * q),
            ("server", d, ed, "", "", 7, 6 * q + 3 * q // 4, q + q // 2),
            ("cache", d, ed, "", "", 8, 7 * q, q // 2),
        )
        errs = {0, 7, 8, 9} if error else set()
        for i, (role, svc, ep, peer, peer_ep, parent, off, dur) in enumerate(shape):
            is_root = parent < 0
            key = (role, svc, ep, peer if role == "client" else ("" if is_root else "child"),
                   peer_ep if role == "client" else "", i in errs)
            t = self._template(key)
            buf = bytearray(t.data)
            ot, os_, op, o0, o1, ou = t.offsets
            buf[ot:ot + 16] = tid
            buf[os_:os_ + 8] = ids[8 * i:8 * i + 8]
            if op >= 0:
                buf[op:op + 8] = ids[8 * parent:8 * parent + 8]
            struct.pack_into("<Q", buf, o0, start + off)
            struct.pack_into("<Q", buf, o1, start + off + max(dur, 1000))
            buf[ou:ou + 8] = user
            out.setdefault(svc, []).append(bytes(buf))
        return tid

    def request(self, starts: list[int]) -> tuple[bytes, list[bytes]]:
        """One ``ExportTraceServiceRequest`` holding a trace per start time, and the trace ids."""
        by_svc: dict[str, list[bytes]] = {}
        tids = [self.trace(s, by_svc) for s in starts]
        parts = []
        for svc, spans in by_svc.items():
            scope_spans = _ld(1, self._scope) + b"".join(_ld(2, s) for s in spans)
            parts.append(_ld(1, _ld(1, self._resources[svc]) + _ld(2, scope_spans)))
        return b"".join(parts), tids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_s(pid: int) -> float:
    """user+system CPU seconds of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _du(path: Path) -> int:
    if path.is_file():  # DuckDB: the file plus its own log, if one is left
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".wal")) if p.exists())
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Result:
    backend: str
    spans: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rejected: int = 0
    throttled: int = 0
    reconnects: int = 0
    disk_bytes: int = 0
    dir_bytes: int = 0
    query_ms: list[float] = field(default_factory=list)
    trace_ms: list[float] = field(default_factory=list)
    trace_ok: int = 0
    trace_checked: int = 0

    @property
    def spans_per_core(self) -> float:
        return self.spans / self.cpu_s if self.cpu_s else 0.0

    @property
    def bytes_per_span(self) -> float:
        return self.disk_bytes / self.spans if self.spans else 0.0


class Sender:
    """Generates and POSTs the data set from ``connections`` keep-alive connections."""

    def __init__(self, port: int, spans: int, batch: int, connections: int, t0_ns: int) -> None:
        self.port, self.connections = port, connections
        self.traces = max(spans // SPANS_PER_TRACE, 1)
        self.per_req = max(batch // SPANS_PER_TRACE, 1)
        self.t0_ns = t0_ns
        self.step_ns = HOUR_NS // self.traces
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.acked = self.rejected = self.throttled = self.reconnects = 0
        self.sample: list[str] = []
        self.errors: list[str] = []

    def _worker(self, wid: int) -> None:
        factory = SpanFactory(seed=wid + 1)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/x-protobuf"}
        try:
            while True:
                with self._lock:
                    k = next(self._next)
                first = k * self.per_req
                if first >= self.traces:
                    return
                idx = range(first, min(first + self.per_req, self.traces))
                body, tids = factory.request([self.t0_ns + i * self.step_ns for i in idx])
                while True:
                    try:
                        conn.request("POST", "/v1/traces", body, headers)
                        resp = conn.getresponse()
                        data = resp.read()
                    except (ConnectionError, http.client.HTTPException):
                        # not acknowledged (e.g. a keep-alive connection closed by the server as
                        # the request went out): reconnect and send it again
                        conn.close()
                        with self._lock:
                            self.reconnects += 1
                        time.sleep(0.1)
                        continue
                    if resp.status in (429, 503):
                        with self._lock:
                            self.throttled += 1
                        time.sleep(float(resp.getheader("Retry-After") or 1))
                        continue
                    break
                if resp.status != 200:
                    self.errors.append(f"HTTP {resp.status}: {data[:200]!r}")
                    return
                rejected = ExportTraceServiceResponse.FromString(data).partial_success.rejected_spans
                with self._lock:
                    self.acked += 1
                    self.rejected += rejected
                    if k % max(1, self.traces // self.per_req // 100) == 0:
                        self.sample.append(tids[0].hex())
        finally:
            conn.close()

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, args=(w,)) for w in range(self.connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.errors:
            raise SystemExit(f"the receiver refused a batch: {self.errors[0]}")


def _start_receiver(backend: str, store: Path, wal: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "noops.observe.otlp", "--backend", backend,
                             "--store", str(store), "--wal", str(wal), "--port", str(port)])
    deadline = time.monotonic() + 60
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("POST", "/v1/traces", b"", {"Content-Type": "application/x-protobuf"})
            c.getresponse().read()
            c.close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the {backend} receiver did not start") from None
            time.sleep(0.1)


def _checkpoint(wal: Path) -> int:
    try:
        return int((wal / "checkpoint").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _open_store(backend: str, path: Path) -> Any:
    if backend == "duckdb":
        from noops.observe.store import DuckDBStore

        return DuckDBStore(path)
    from noops.observe.store.clickhouse import ClickHouseStore

    return ClickHouseStore.embedded(path)


def run_backend(backend: str, spans: int, batch: int, connections: int, workdir: Path) -> Result:
    res = Result(backend, spans)
    store_path = workdir / ("telemetry.duckdb" if backend == "duckdb" else "chdb")
    wal = workdir / f"wal-{backend}"
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    t0_ns = (time.time_ns() - HOUR_NS - 60 * 10**9) // 10**9 * 10**9
    proc = _start_receiver(backend, store_path, wal, port)
    try:
        sender = Sender(port, spans, batch, connections, t0_ns)
        res.spans = sender.traces * SPANS_PER_TRACE
        cpu0, wall0 = _cpu_s(proc.pid), time.perf_counter()
        sender.run()
        while _checkpoint(wal) < sender.acked:
            if proc.poll() is not None:
                raise SystemExit(f"the {backend} receiver exited with {proc.returncode}")
            time.sleep(0.02)
        res.wall_s = time.perf_counter() - wall0
        res.cpu_s = _cpu_s(proc.pid) - cpu0
        res.rejected, res.throttled = sender.rejected, sender.throttled
        res.reconnects = sender.reconnects
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    res.dir_bytes = res.disk_bytes = _du(store_path)

    store = _open_store(backend, store_path)
    try:
        if backend == "clickhouse":
            # The data directory also holds ClickHouse's own system logs and parts that merges
            # replaced (kept for old_parts_lifetime): count the live parts of the store's tables.
            ((active,),) = store._tuples(
                "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = currentDatabase()")
            res.disk_bytes = int(active)
        start = datetime.fromtimestamp((t0_ns - 60 * 10**9) / 1e9, tz=UTC)
        end = datetime.fromtimestamp((t0_ns + HOUR_NS + 120 * 10**9) / 1e9, tz=UTC)
        for rnd in range(4):
            for svc in SERVICES:
                q0 = time.perf_counter()
                store.endpoints(svc, start, end)
                if rnd:  # round 0 warms caches up
                    res.query_ms.append((time.perf_counter() - q0) * 1000)
        for tid in sender.sample:
            q0 = time.perf_counter()
            got = store.trace(tid)
            res.trace_ms.append((time.perf_counter() - q0) * 1000)
            res.trace_checked += 1
            res.trace_ok += len(got) == SPANS_PER_TRACE
    finally:
        store.close()
    return res


def _line(label: str, value: str, ok: bool, target: str) -> str:
    return f"  {label:<34} {value:>16}   target {target:<14} {'PASS' if ok else 'MISS'}"


def report(r: Result) -> str:
    qmed, qmax = statistics.median(r.query_ms), max(r.query_ms)
    tmed, tmax = statistics.median(r.trace_ms), max(r.trace_ms)
    return "\n".join([
        f"{r.backend}: {r.spans:,} spans in {r.wall_s:.1f} s wall "
        f"({r.spans / r.wall_s:,.0f} spans/s), receiver CPU {r.cpu_s:.1f} s, "
        f"rejected {r.rejected}, throttled requests {r.throttled}, reconnects {r.reconnects}",
        _line("ingest spans/s per core", f"{r.spans_per_core:,.0f}",
              r.spans_per_core >= TARGET_SPANS_PER_CORE, f">= {TARGET_SPANS_PER_CORE:,}"),
        _line("bytes per span on disk", f"{r.bytes_per_span:.1f}",
              r.bytes_per_span <= TARGET_BYTES_PER_SPAN, f"<= {TARGET_BYTES_PER_SPAN:.0f}"),
        *([f"  {'  (whole data directory)':<34} {r.dir_bytes / r.spans:>16.1f}"]
          if r.dir_bytes != r.disk_bytes else []),
        _line("p50/p95/p99 by endpoint (median)", f"{qmed:.1f} ms", qmed <= TARGET_QUERY_MS,
              f"<= {TARGET_QUERY_MS:.0f} ms"),
        f"  {'  (max over services and rounds)':<34} {qmax:>13.1f} ms",
        _line("trace by id (median)", f"{tmed:.1f} ms", tmed <= TARGET_TRACE_MS,
              f"<= {TARGET_TRACE_MS:.0f} ms"),
        f"  {'  (max)':<34} {tmax:>13.1f} ms   complete traces {r.trace_ok}/{r.trace_checked}",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=10_000_000)
    ap.add_argument("--backend", choices=("duckdb", "clickhouse", "both"), default="both")
    ap.add_argument("--batch", type=int, default=2000, help="spans per export request")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    backends = ("duckdb", "clickhouse") if args.backend == "both" else (args.backend,)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="noops-bench-telemetry-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.spans:,} spans, batches of {args.batch}, {args.connections} connections, "
          f"{os.cpu_count()} cores, work dir {workdir}", flush=True)
    results = []
    try:
        for b in backends:
            r = run_backend(b, args.spans, args.batch, args.connections, workdir / b)
            results.append(r)
            if not args.json:
                print(report(r), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps([{**r.__dict__, "spans_per_core": r.spans_per_core,
                           "bytes_per_span": r.bytes_per_span} for r in results]))
    elif len(results) == 2:
        d, c = results
        print(f"clickhouse/duckdb: ingest per core {c.spans_per_core / d.spans_per_core:.2f}x, "
              f"bytes/span {c.bytes_per_span / d.bytes_per_span:.2f}x, "
              f"percentile query {statistics.median(c.query_ms) / statistics.median(d.query_ms):.2f}x, "
              f"trace by id {statistics.median(c.trace_ms) / statistics.median(d.trace_ms):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
