#!/usr/bin/env python3
"""Benchmark: the floor of a Python proxy doing TLS on both sides, in bench/gateway.py's harness.

A benchmark, not a test: it asserts nothing about time. It answers what the gateway target
(>= 0.8x nginx's req/s, bench/gateway.py) asks of the language: how much CPU per request does a
uvloop proxy that terminates mTLS and dials the upstream over mTLS need before doing any work
of its own? Same PKI, same shared upstream nginx (TLS 1.3, client certificate required, Unix
socket), same nginx gateway and same wrk + LD_PRELOAD client-certificate shim as
bench/gateway.py (imported from it). Next to nginx it runs two minimal Python proxies:

* ``pump``: uvloop, TLS 1.3 server on 127.0.0.1 (serving cert for bench.localhost, client
  certificate REQUIRED, verified against the CA bundle); per accepted client connection one
  upstream TLS connection over the Unix socket presenting the gateway SVID and verifying the
  upstream (CA bundle, hostname web.bench.noops.local); a 1:1 byte pump with asyncio Protocols,
  pause/resume reading for backpressure. No HTTP parsing.
* ``hpump``: the same, but httptools parses each request head, and the head is rebuilt with one
  header added (``X-Forwarded-For``) before forwarding; responses are still pumped as bytes.

Neither checks anything: the difference to the front door's CPU per request is the front
door's own work (HTTP handling, session, trust score, policy, assertion, audit, spans).

Usage::

    python bench/gateway_floor.py [--seconds 10] [--runs 3]
    # internal: ... --serve pump|hpump --port P --upstream SOCK --pki DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
UPSTREAM_DNS = "web.bench.noops.local"


# -- the proxy ----------------------------------------------------------------------------------

class Upstream(asyncio.Protocol):
    """The upstream side of one pair: bytes from the upstream go to the client."""

    __slots__ = ("down", "transport")

    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.down.transport.write(data)

    def eof_received(self):
        self.down.transport.close()
        return False

    def connection_lost(self, exc) -> None:
        self.down.transport.close()

    # the upstream's send buffer is full: stop reading from the client
    def pause_writing(self) -> None:
        self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        self.down.transport.resume_reading()


class Downstream(asyncio.Protocol):
    """The client side: dials the upstream when the client connects, then pumps bytes."""

    def __init__(self, loop, up_ctx: ssl.SSLContext, up_path: str) -> None:
        self.loop, self.up_ctx, self.up_path = loop, up_ctx, up_path
        self.transport = None
        self.up: Upstream | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.pause_reading()  # until the upstream is there
        self.loop.create_task(self._dial())

    async def _dial(self) -> None:
        up = Upstream(self)
        try:
            await self.loop.create_unix_connection(lambda: up, self.up_path, ssl=self.up_ctx,
                                                   server_hostname=UPSTREAM_DNS)
        except Exception as exc:
            print(f"upstream dial failed: {exc!r}", file=sys.stderr)
            self.transport.close()
            return
        if self.closed:
            up.transport.close()
            return
        self.up = up
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.up.transport.write(data)

    def eof_received(self):
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.transport.resume_reading()


class ParsingDownstream(Downstream):
    """Variant 2: httptools parses each request; the head is rebuilt with one more header."""

    def __init__(self, loop, up_ctx, up_path) -> None:
        super().__init__(loop, up_ctx, up_path)
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[bytes] = []
        self.peer = b"127.0.0.1"

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0].encode()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        p = self.parser
        head = b"".join([p.get_method(), b" ", self.url, b" HTTP/", p.get_http_version().encode(),
                         b"\r\n", *self.headers, b"X-Forwarded-For: ", self.peer, b"\r\n\r\n"])
        self.up.transport.write(head)

    def on_body(self, body: bytes) -> None:
        self.up.transport.write(body)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            print(f"bad request: {exc!r}", file=sys.stderr)
            self.transport.close()


def serve(kind: str, port: int, upstream: str, pki_dir: Path) -> None:
    import uvloop

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(pki_dir / "serving.crt", pki_dir / "serving.key")
    server_ctx.load_verify_locations(pki_dir / "ca-bundle.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    up_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname
    up_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    up_ctx.load_cert_chain(pki_dir / "gateway.crt", pki_dir / "gateway.key")
    up_ctx.load_verify_locations(pki_dir / "ca-bundle.pem")
    cls = ParsingDownstream if kind == "hpump" else Downstream

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: cls(loop, up_ctx, upstream), "127.0.0.1", port,
                                          ssl=server_ctx, backlog=1024, reuse_address=True)
        async with server:
            await server.serve_forever()

    uvloop.run(run())


# -- the benchmark ------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", choices=["pump", "hpump"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--upstream")
    ap.add_argument("--pki", type=Path)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="rounds, order rotated; median reported")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream, args.pki)
        return 0

    sys.path.insert(0, str(BENCH))
    import gateway as gw  # bench/gateway.py (it imports bench/proxy.py as "proxy")
    from proxy import cpu_seconds, free_port, start_nginx, stop, wait_path, wait_port

    work = Path(tempfile.mkdtemp(prefix="pumpbench-"))
    os.chmod(work, 0o755)
    procs: list[subprocess.Popen] = []
    try:
        pki = gw.make_pki(work / "home" / "gate" / "ca", work / "pki")
        os.chmod(work / "pki", 0o755)
        shim = gw.build_shim(work)
        env = {**os.environ, "LD_PRELOAD": str(shim), "BENCH_SNI": gw.HOST,
               "BENCH_CLIENT_CERT": str(pki.device[0]), "BENCH_CLIENT_KEY": str(pki.device[1])}
        cookie = "x" * 43  # a session-cookie-sized value; nobody checks it here
        tls_sock, plain_sock = work / "up-tls.sock", work / "up.sock"
        ports = {"nginx": free_port(), "pump": free_port(), "hpump": free_port(), "direct": free_port()}
        procs.append(start_nginx(work / "upstream",
                                 gw.upstream_block(tls_sock, plain_sock, ports["direct"], pki)))
        wait_path(tls_sock)
        procs.append(start_nginx(work / "nginx", gw.nginx_gateway_block(tls_sock, ports["nginx"], pki)))
        pids = {"nginx": procs[-1].pid}
        for kind in ("pump", "hpump"):
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port",
                                           str(ports[kind]), "--upstream", str(tls_sock),
                                           "--pki", str(work / "pki")]))
            pids[kind] = procs[-1].pid
        for name in ("nginx", "pump", "hpump"):
            wait_port(ports[name])
        # checks: the body through each gateway with the device cert; refused without it
        for name in ("nginx", "pump", "hpump"):
            status, body = gw.probe(ports[name], cookie, pki.device)
            no_cert, _ = gw.probe(ports[name], cookie, None)
            print(f"{name}: with cert {status} {body!r}; without cert {no_cert}", file=sys.stderr)
            if status != 200 or body != gw.BODY or no_cert == 200:
                raise SystemExit(f"{name}: set-up is wrong")

        load_before = os.getloadavg()
        names = ["nginx", "pump", "hpump"]
        results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for run in range(args.runs):
            order = names[run % 3:] + names[:run % 3]
            for name in order:
                if args.warmup:
                    gw.wrk(ports[name], args.warmup, args.threads, args.connections, cookie, env)
                before = cpu_seconds([pids[name]])
                machine = gw.Machine([q.pid for q in procs])
                r = gw.wrk(ports[name], args.seconds, args.threads, args.connections, cookie, env)
                used = cpu_seconds([pids[name]]) - before
                machine.finish(r)
                r["cpu_us_per_req"] = used / max(r["requests"], 1) * 1e6
                r["load1"] = os.getloadavg()[0]
                results[name].append(r)
                print(f"run {run} {name}: {r}", file=sys.stderr)
        if args.warmup:
            gw.wrk(ports["direct"], args.warmup, args.threads, args.connections, cookie, env)
        direct = gw.wrk(ports["direct"], args.seconds, args.threads, args.connections, cookie, env)
        load_after = os.getloadavg()

        med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in results.items()}
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.runs} run(s), median")
        print(f"{'gateway':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'errors':>8}"
              f"{'ratio':>7}{'steal%':>8}{'other%':>8}")
        for n, r in med.items():
            print(f"{n:<9}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['cpu_us_per_req']:>12.1f}{r['errors']:>8.0f}{r['rps'] / med['nginx']['rps']:>7.2f}"
                  f"{r['steal_pct']:>8.0f}{r['other_pct']:>8.0f}")
        print(f"{'(direct)':<9}{direct['rps']:>10.0f}{direct['p50_ms']:>9.2f}{direct['p99_ms']:>9.2f}"
              f"{'':>12}{direct['errors']:>8.0f}")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}; "
              f"after: {' '.join(f'{x:.2f}' for x in load_after)}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
