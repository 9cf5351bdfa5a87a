"""The front door as its own process: ``python -m noops.gate.frontdoor --home H --port P``.

It serves HTTPS on 127.0.0.1 with certificates from the built-in CA (``$NOOPS_HOME/gate/ca``;
its bundle is copied to ``$NOOPS_HOME/tls/ca.crt``: trust it once, each ``APP.localhost`` gets
its own leaf by SNI), enforces the gateway's policy on every request (:mod:`noops.gate.pep`),
speaks mTLS to every instance (:mod:`noops.gate.mtls`), accepts workloads' calls to other apps
on ``$NOOPS_HOME/run/gateway.sock`` (mTLS with their SVIDs), and routes by reading the table
the daemon publishes at
``$NOOPS_HOME/run/routes.json`` (checked every ``poll_s``; replaced atomically by the writer).
Being a separate process is what lets apps keep answering while the daemon restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from noops.gate._tracing import GatewaySpans
from noops.gate.endpoints import Endpoint, StaticEndpointRegistry
from noops.gate.identity import IdentityStore
from noops.gate.mtls import UpstreamTLS, load_or_create_ca
from noops.gate.pep import GateFiles, Gatekeeper
from noops.gate.proxy import FrontDoor, run_forever
from noops.gate.serving import ServingCerts, write_bundle

__all__ = ["RoutesWatcher", "main"]

log = logging.getLogger("noops.frontdoor")


class RoutesWatcher:
    """Keeps a :class:`StaticEndpointRegistry` in step with the routes file."""

    def __init__(self, path: Path, registry: StaticEndpointRegistry, poll_s: float = 0.1) -> None:
        self.path, self.registry, self.poll_s = path, registry, poll_s
        self._seen: bytes | None = None
        self._apps: set[str] = set()

    def load(self) -> bool:
        """Apply the file if its content changed; True when something was applied.

        The content is compared, not the mtime: two rewrites within one timestamp tick can
        reuse the same inode, and a missed update would leave an app unrouted. After applying,
        the file's ``generation`` is acknowledged in ``routes.applied`` so the daemon knows
        the front door routes what it published.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        if raw == self._seen:
            return False
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError:
            return False  # a writer replaces the file atomically; try again next tick
        self._seen = raw
        apps = data.get("apps", {})
        for app, entry in apps.items():
            endpoints = [Endpoint(e["id"], app, e["socket_path"], bool(e.get("ready")),
                                  bool(e.get("draining")), str(e.get("spiffe_id", "")))
                         for e in entry.get("endpoints", [])]
            try:
                self.registry.set(app, entry.get("hosts", []), endpoints)
            except Exception:  # one bad app must not stop the others routing
                log.exception("routes for %s rejected", app)
        for gone in self._apps - set(apps):
            self.registry.remove(gone)
        self._apps = set(apps)
        ack = self.path.with_name("routes.applied")
        tmp = ack.with_name(".routes.applied.tmp")
        tmp.write_text(str(int(data.get("generation", 0))))
        os.replace(tmp, ack)
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.load()
            time.sleep(self.poll_s)


def _started(door: FrontDoor, serving: ServingCerts, host: str) -> None:
    log.info("front door on %s:%s", host, door.port)

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(60)
            if serving.renew():
                log.info("workload socket certificate renewed")

    _tasks.add(asyncio.get_running_loop().create_task(renew_forever()))


_tasks: set[asyncio.Task[None]] = set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="noops-frontdoor")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--otlp-socket", default=None, type=Path,
                        help="send the gateway's own spans to the OTLP receiver on this Unix socket")
    parser.add_argument("--traces-per-second", default=100, type=int,
                        help="trace at most this many requests a second (default 100)")
    parser.add_argument("--sso-host", default=None,
                        help="the sign-in host for single sign-on across app hosts (none: each "
                             "app host signs in on its own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    registry = StaticEndpointRegistry()
    watcher = RoutesWatcher(args.home / "run" / "routes.json", registry)
    watcher.load()
    stop = threading.Event()
    threading.Thread(target=watcher.run, args=(stop,), daemon=True, name="routes").start()
    files = GateFiles(args.home / "gate")
    files.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = load_or_create_ca(files.ca)
    serving = ServingCerts(ca)
    write_bundle(ca, args.home / "tls" / "ca.crt")
    gate = Gatekeeper(files, ca=ca, identities=IdentityStore(files.identity_db), port=args.port,
                      sso_host=args.sso_host)
    pid_file = args.home / "run" / "frontdoor.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    spans = GatewaySpans(str(args.otlp_socket), per_second=args.traces_per_second) \
        if args.otlp_socket else None
    try:
        run_forever(registry, host=args.host, port=args.port, tls=serving.public_context(), gate=gate,
                    upstream_tls=UpstreamTLS.for_ca(files.ca),
                    workload=(str(args.home / "run" / "gateway.sock"), serving.workload_context()),
                    on_started=lambda door: _started(door, serving, args.host), spans=spans)
    finally:
        stop.set()
        gate.close()  # the audit log first: a slow receiver must not hold it up
        if spans is not None:
            spans.close()
        if pid_file.exists() and pid_file.read_text() == str(os.getpid()):
            pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
