"""HTTP health probes through an instance's Unix socket (Kubernetes semantics).

A probe passes on a 2xx/3xx answer within ``timeout_s``. :func:`wait_until` runs one probe kind
(startup or readiness) until ``successes`` passes in a row or ``failures`` failures in a row.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from noops.appspec import Probe

__all__ = ["ProbeResult", "probe_once", "wait_until"]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


async def probe_once(socket_path: str, path: str, host: str, timeout_s: float) -> ProbeResult:
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as client:
            resp = await client.get(f"http://{host}{path}",
                                    headers={"User-Agent": "noops-health/1"})
    except httpx.TimeoutException:
        return ProbeResult(False, f"GET {path} timed out after {timeout_s:g}s")
    except httpx.HTTPError as exc:
        return ProbeResult(False, f"GET {path} failed: {exc.__class__.__name__}")
    if 200 <= resp.status_code < 400:
        return ProbeResult(True, f"GET {path} → {resp.status_code}")
    return ProbeResult(False, f"GET {path} → {resp.status_code}")


async def wait_until(socket_path: str, path: str, host: str, probe: Probe,
                     alive: object = None) -> ProbeResult:
    """Probe every ``period_s`` until ``successes`` in a row (ok) or ``failures`` in a row."""
    good = bad = 0
    last = ProbeResult(False, "not probed yet")
    while True:
        if callable(alive) and not alive():
            return ProbeResult(False, "the instance exited during its checks")
        last = await probe_once(socket_path, path, host, probe.timeout_s)
        if last.ok:
            good, bad = good + 1, 0
            if good >= probe.successes:
                return last
        else:
            good, bad = 0, bad + 1
            if bad >= probe.failures:
                return ProbeResult(False, f"{last.detail} ({bad} failures in a row)")
        await asyncio.sleep(probe.period_s)
