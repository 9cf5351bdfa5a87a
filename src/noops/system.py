"""The platform's own workloads, run by the daemon next to the apps and held to the same rules.

* The uptime prober is a workload: it presents the SVID ``spiffe://<td>/app/noops/probe`` to the
  front door, and the default policy allows that identity on every app host, so a default probe
  checks the whole public path (TLS, gateway, mTLS hop, app) without a user session.
* The console (``python -m noops.console``) is served like an app: HTTPS on
  ``$NOOPS_HOME/run/console.sock`` with the SVID ``spiffe://<td>/app/console/web``, admitting
  only the gateway's identity, and published in the route table as the app ``console`` on
  ``console.localhost`` — so every request to it passes the gateway's enforcement point (the
  default policy asks for the ``admin`` group and a minimum trust score). The daemon restarts it
  with back-off if it exits.

Their certificates live in ``$NOOPS_HOME/run/system/<name>/identity/`` (the same layout and
half-life renewal as instances', :mod:`noops.runtime.identity`); a renewal rewrites the files in
place and both readers pick the new pair up on their next handshake. The app names ``console``
and ``noops`` are reserved for them, ``auth`` (``auth.localhost`` is the gateway's own sign-in
host, :mod:`noops.gate._pep_sso`) and ``noops-gateway`` (the service of the gateway's spans).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from noops.gate._tracing import SERVICE_NAME as GATEWAY_SERVICE
from noops.runtime.identity import SvidIssuer, SvidRecord, gateway_id, read_record, renewal_due, write_svid

__all__ = ["CONSOLE_APP", "GATEWAY_SERVICE", "PROBE_ID", "RESERVED_APPS", "SIGN_IN_APP", "SystemWorkloads"]

log = logging.getLogger("noops.system")

CONSOLE_APP = "console"
PROBE_ID = ("noops", "probe")
SIGN_IN_APP = "auth"  # auth.localhost: the gateway's sign-in host (single sign-on), no app behind it
RESERVED_APPS = frozenset({CONSOLE_APP, PROBE_ID[0], SIGN_IN_APP, GATEWAY_SERVICE})


class SystemWorkloads:
    """Identities of the prober and the console, and the console process."""

    def __init__(self, home: Path, ca: SvidIssuer, *, ttl_s: int) -> None:
        self.home = home
        self.ca = ca
        self.ttl_s = ttl_s
        self.root = home / "run" / "system"
        self.console_socket = home / "run" / "console.sock"
        self.console_log = home / "logs" / "console.log"
        self._proc: asyncio.subprocess.Process | None = None

    # -- identities ----------------------------------------------------------------------------
    def identity(self, name: str, app: str, process: str) -> SvidRecord:
        """The current SVID of ``name`` (issued or renewed first when due)."""
        folder = self.root / name
        record = read_record(folder)
        if renewal_due(record, self.ttl_s, time.time()) or record is None:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            record = write_svid(folder, self.ca, app, process, self.ttl_s)
        return record

    def probe_identity(self) -> SvidRecord:
        return self.identity("probe", *PROBE_ID)

    def console_identity(self) -> SvidRecord:
        return self.identity("console", CONSOLE_APP, "web")

    def renew(self) -> None:
        """Renew both identities past half-life (called from the daemon's rotation loop)."""
        self.probe_identity()
        self.console_identity()

    # -- the console ---------------------------------------------------------------------------
    def console_endpoint(self) -> dict[str, object]:
        """The console's entry in the route table (what the front door dials and pins)."""
        record = self.console_identity()
        return {"id": "console-web", "socket_path": str(self.console_socket), "ready": True,
                "draining": False, "release": 0, "spiffe_id": record.spiffe_id}

    async def run_console(self, stop: asyncio.Event, api_socket: Path) -> None:
        """Keep ``python -m noops.console`` running until ``stop``; back-off 1 s → 30 s."""
        backoff = 1.0
        while not stop.is_set():
            record = await asyncio.to_thread(self.console_identity)
            self.console_log.parent.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            with open(self.console_log, "ab") as out:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "noops.console", "--home", str(self.home),
                    "--api-socket", str(api_socket), "--listen", f"unix:{self.console_socket}",
                    "--tls-cert", record.cert, "--tls-key", record.key,
                    "--client-ca", record.bundle, "--peer-id", gateway_id(self.ca.trust_domain),
                    "--parent-pid", str(os.getpid()),
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
            waiter = asyncio.create_task(self._proc.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                await self.stop_console()
                waiter.cancel()
                return
            code = waiter.result()
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            log.warning("the console exited (%s); restarting in %.0fs (see %s)", code, backoff,
                        self.console_log)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)

    async def stop_console(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
