"""HTTP health probes through an instance's Unix socket (Kubernetes semantics).

A probe passes on a 2xx/3xx answer within ``timeout_s``. :func:`wait_until` runs one probe kind
(startup or readiness) until ``successes`` passes in a row or ``failures`` failures in a row.

The instance socket only speaks mTLS with the gateway's identity, so the probes dial it like
the front door does: with ``tls`` (a :class:`~noops.runtime.identity.ProbeTLS`), and they count
as passing only when the instance proved ``peer_id``. Without ``tls`` they speak plain HTTP
(an instance socket refuses that: useful only against test servers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from noops.appspec import Probe
from noops.runtime.identity import ProbeTLS

__all__ = ["ProbeResult", "probe_once", "wait_until"]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


async def probe_once(socket_path: str, path: str, host: str, timeout_s: float,
                     tls: ProbeTLS | None = None, peer_id: str = "") -> ProbeResult:
    """One ``GET path`` over the instance socket; only the status line is read."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            if tls is None:
                reader, writer = await asyncio.open_unix_connection(socket_path)
            else:
                reader, writer = await asyncio.open_unix_connection(
                    socket_path, ssl=tls.context(), server_hostname=tls.server_hostname)
                if not tls.check(writer.get_extra_info("ssl_object"), peer_id):
                    return ProbeResult(False, f"GET {path}: the instance is not {peer_id or '?'}"
                                       " (its certificate names another SPIFFE ID)")
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: noops-health/1\r\n"
                         "Connection: close\r\n\r\n".encode())
            status_line = await reader.readline()
    except TimeoutError:
        return ProbeResult(False, f"GET {path} timed out after {timeout_s:g}s")
    except OSError as exc:  # ssl.SSLError too
        why = exc.strerror or getattr(exc, "reason", None) or exc.__class__.__name__
        return ProbeResult(False, f"GET {path} failed: {why}")
    finally:
        if writer is not None:
            writer.close()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeResult(False, f"GET {path}: no HTTP answer (the app closed the connection)")
    status = int(parts[1])
    return ProbeResult(200 <= status < 400, f"GET {path} → {status}")


async def wait_until(socket_path: str, path: str, host: str, probe: Probe,
                     alive: object = None, tls: ProbeTLS | None = None,
                     peer_id: str = "") -> ProbeResult:
    """Probe every ``period_s`` until ``successes`` in a row (ok) or ``failures`` in a row."""
    good = bad = 0
    last = ProbeResult(False, "not probed yet")
    while True:
        if callable(alive) and not alive():
            return ProbeResult(False, "the instance exited during its checks")
        last = await probe_once(socket_path, path, host, probe.timeout_s, tls, peer_id)
        if last.ok:
            good, bad = good + 1, 0
            if good >= probe.successes:
                return last
        else:
            good, bad = 0, bad + 1
            if bad >= probe.failures:
                return ProbeResult(False, f"{last.detail} ({bad} failures in a row)")
        await asyncio.sleep(probe.period_s)
