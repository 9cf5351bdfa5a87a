"""The front door's own work per request, in-process: CPU time of the event loop's thread for
one kept-alive request and its response, with the network and TLS taken out (a benchmark, not a
test).

``bench/gateway.py`` measures the whole gateway against nginx, but on a shared machine whose
speed changes by half from one minute to the next, a change of a few microseconds per request
drowns in it. This script measures only what the front door's Python does per request, as
thread CPU time, which the machine's speed moves far less:

* the set-up of ``bench/gateway.py`` (its CA, user, session, device, policy, trust settings and
  route, in a temporary ``NOOPS_HOME``), a real :class:`noops.gate.pep.Gatekeeper` with its audit
  log, and a real :class:`noops.gate._client.ClientConnection` and
  :class:`noops.gate._upstream.Upstream` whose transports are stand-ins that keep what is
  written (the device certificate is presented through the stand-in ``ssl_object``);
* each request is the bench's request (device certificate, session cookie), fed to the client
  connection; the app's answer (nginx's ``200 ok`` head) is fed to the upstream connection; every
  check runs as under load: the decision (reused within its second, as for wrk), the audit
  record, the assertion, the request id;
* ``--connections`` client connections (50, as wrk's) each get a request, then the app answers
  each (as many app connections in use); ``--rounds`` rounds of about ``--requests`` requests;
  the loop yields about every 50 requests, so the audit batches are written as on a busy
  gateway. Printed: the loop thread's CPU per request for each round, their min and median, and
  the process's (the audit thread's syncs included).

Before timing it checks that the forwarded head carries the assertion and the client got the
app's ``200``, and after it that the audit log holds one record per request and verifies.
Compare trees with ``PYTHONPATH=/path/to/other/src python bench/gateway_inproc.py``.

Usage::

    python bench/gateway_inproc.py [--requests 20000] [--rounds 7] [--connections 50] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as bench  # the set-up of bench/gateway.py

RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 05:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


class _SSLObject:
    def __init__(self, der: bytes, sni: str) -> None:
        self.der, self.noops_sni = der, sni

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.der


class _Transport:
    """What a protocol needs of a transport; keeps the last write."""

    def __init__(self, extra: dict[str, Any]) -> None:
        self.extra = extra
        self.writes = 0
        self.last = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise SystemExit("the front door closed the client connection: check the set-up")

    abort = close


async def run(args: argparse.Namespace, work: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from noops.gate._client import ClientConnection
    from noops.gate._core import Core, FrontDoorConfig
    from noops.gate._upstream import Upstream
    from noops.gate.audit import verify
    from noops.gate.endpoints import StaticEndpointRegistry
    from noops.gate.frontdoor import RoutesWatcher
    from noops.gate.identity import IdentityStore
    from noops.gate.mtls import load_or_create_ca
    from noops.gate.pep import GateFiles, Gatekeeper

    home = work / "home"
    pki = bench.make_pki(home / "gate" / "ca", work / "pki")
    cookie = bench.provision_gate(home, pki.device_serial)
    bench.write_routes(home, work / "upstream.sock", tls=True, generation=1)
    registry = StaticEndpointRegistry()
    RoutesWatcher(home / "run" / "routes.json", registry).load()
    files = GateFiles(home / "gate")
    identities = IdentityStore(files.identity_db)
    gate = Gatekeeper(files, ca=load_or_create_ca(files.ca), identities=identities, port=443)
    core = Core(registry, FrontDoorConfig(), tls=True)
    core.gate = gate
    der = x509.load_pem_x509_certificate(pki.device[0].read_bytes()).public_bytes(Encoding.DER)
    pool = core.pick(registry.endpoints(bench.HOST), None)
    assert pool is not None
    clients: list[tuple[ClientConnection, _Transport]] = []
    for n in range(args.connections):
        client_transport = _Transport({"peername": ("127.0.0.1", 50000 + n),
                                       "ssl_object": _SSLObject(der, bench.HOST)})
        client = ClientConnection(core)
        client.connection_made(client_transport)  # type: ignore[arg-type]
        clients.append((client, client_transport))
        upstream = Upstream(pool)
        upstream.connection_made(_Transport({}))  # type: ignore[arg-type]
        pool.put(upstream, core.clock)
    request = (f"GET / HTTP/1.1\r\nHost: {bench.HOST}\r\nUser-Agent: wrk\r\n"
               f"Cookie: {bench.COOKIE_NAME}={cookie}\r\n\r\n").encode()
    in_flight: list[Upstream] = []

    def one_each() -> None:
        """A request on every connection, then the app's answers: ``--connections`` in flight."""
        for client, _ in clients:
            client.data_received(request)
            active = client.active
            assert active is not None and active.up is not None
            in_flight.append(active.up)
        for upstream in in_flight:
            upstream.data_received(RESPONSE)
        in_flight.clear()

    warm_up = max(1, 200 // args.connections)
    for _ in range(warm_up):
        one_each()
    forwarded = pool.idle[-1].transport
    assert isinstance(forwarded, _Transport)
    if b"X-Noops-Assertion: " not in forwarded.last:
        raise SystemExit(f"no assertion forwarded:\n{forwarded.last.decode(errors='replace')}")
    for _, client_transport in clients:
        answer = client_transport.last
        if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(b"ok\n"):
            raise SystemExit(f"the client did not get the app's answer:\n{answer!r}")
    sent = warm_up * args.connections
    batches = max(1, args.requests // args.connections)
    requests = batches * args.connections
    yield_every = max(1, 50 // args.connections)  # batches: about every 50 requests

    async def rounds_of(count: int) -> None:
        for i in range(count):
            one_each()
            if i % yield_every == yield_every - 1:
                await asyncio.sleep(0)

    profile = cProfile.Profile() if args.profile else None
    loop_us: list[float] = []
    process_us: list[float] = []
    for _ in range(args.rounds):
        if profile is not None:
            profile.enable()
        t0, p0 = time.thread_time(), time.process_time()
        await rounds_of(batches)
        t1 = time.thread_time()
        await asyncio.sleep(0.05)  # the last audit batch and its sync
        p1 = time.process_time()
        if profile is not None:
            profile.disable()
        sent += requests
        loop_us.append((t1 - t0) / requests * 1e6)
        process_us.append((p1 - p0) / requests * 1e6)
    gate.close()
    identities.close()
    checked = verify(files.audit)
    records = checked.records
    print(f"{args.rounds} rounds of {requests} requests ({args.connections} kept-alive connection(s), "
          "every check on, network and TLS left out)")
    print("rounds:", " ".join(f"{x:.1f}" for x in loop_us))
    print(f"event loop thread CPU per request: min {min(loop_us):.1f} us, "
          f"median {statistics.median(loop_us):.1f} us")
    print(f"process CPU per request (audit thread included): min {min(process_us):.1f} us, "
          f"median {statistics.median(process_us):.1f} us")
    print(f"audit: {records} records for {sent} requests, chain {'verified' if checked.ok else 'BROKEN'}; "
          f"repeated heads: {core.repeated_requests} requests, {core.repeated_responses} responses")
    if not checked.ok or records < sent:
        raise SystemExit("the audit log does not hold a verified record per request")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20_000, help="requests per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--connections", type=int, default=50,
                    help="client connections with a request in flight each, as wrk -c (as many to the app)")
    ap.add_argument("--profile", action="store_true", help="cProfile the timed rounds (slower; shares only)")
    args = ap.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory(prefix="noops-bench-inproc-") as tmp:
        uvloop.run(run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
