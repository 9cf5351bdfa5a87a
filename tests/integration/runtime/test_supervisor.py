"""The supervisor on real runc instances: crash restarts with back-off, rollouts, isolation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_helpers import tls_get

from helpers import needs
from noops.appspec import AppSpec, Probe
from noops.gate.mtls import UpstreamTLS
from noops.runtime.instances import InstanceManager, InstanceSpec
from noops.runtime.rollout import DeployError, RolloutPlan, rollout
from noops.runtime.supervisor import Supervisor

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap", "ip")]

FAST = AppSpec(health_path="/healthz", startup=Probe(0.2, 2, 100), readiness=Probe(0.2, 1, 2),
               liveness=Probe(0.5, 1, 3), grace_s=5, drain_s=0.5)


class Routes:
    def __init__(self) -> None:
        self.table: dict[str, list[dict[str, Any]]] = {}

    def publish(self, app: str, hosts: Sequence[str], endpoints: Sequence[dict[str, Any]]) -> None:
        self.table[app] = list(endpoints)

    def ready(self, app: str) -> list[dict[str, Any]]:
        return [e for e in self.table.get(app, []) if e["ready"] and not e["draining"]]


def _container_pid(instance_id: str) -> int:
    out = subprocess.run(["runc", "--root", "/run/noops/runc", "state", instance_id],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)["pid"])


def _status(socket_path: str, gateway: UpstreamTLS, path: str = "/") -> int:
    """GET over the instance socket as the gateway (mTLS; nothing left open on failure)."""
    return tls_get(socket_path, gateway.context(), path)[0]


def test_crash_restarts_with_backoff(manager: InstanceManager, flask_image: str,
                                     gateway: UpstreamTLS) -> None:
    async def scenario() -> list[float]:
        sup = Supervisor(manager, Routes(), backoff_s=1.0, max_backoff_s=8.0, tls=gateway)
        slot, result = await sup.start("crashy", 1, "web", 0,
                                       InstanceSpec("crashy", 1, "web", flask_image, grace_s=5),
                                       FAST)
        assert result.ok, result.detail
        for round_ in range(3):
            assert slot.instance is not None
            os.kill(_container_pid(slot.instance.id), 9)
            deadline = time.monotonic() + 60
            while slot.restarts < round_ + 1 or not slot.ready:
                assert time.monotonic() < deadline, slot.to_json()
                await asyncio.sleep(0.1)
        assert [e["exit_code"] for e in slot.exits] == [137, 137, 137]
        assert slot.instance is not None and _status(slot.instance.socket_path, gateway) == 200
        await sup.stop(slot)
        return [e["at"] for e in slot.exits], slot.restart_times

    exits, restarts = asyncio.run(scenario())
    waits = [r - e for e, r in zip(exits, restarts, strict=True)]
    # back-off doubles: ~1 s, ~2 s, ~4 s (never less than the back-off)
    assert waits[0] >= 1.0 and waits[1] >= 2.0 and waits[2] >= 4.0, waits
    assert waits[0] < waits[1] < waits[2]


def test_port_not_reachable_from_host_namespace(manager: InstanceManager, flask_image: str,
                                                gateway: UpstreamTLS) -> None:
    instance = manager.start(InstanceSpec("isolated", 1, "web", flask_image, port=18931,
                                          grace_s=5))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _status(instance.socket_path, gateway) == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with pytest.raises(httpx.ConnectError):
            httpx.get("http://127.0.0.1:18931/", timeout=2)
        assert oct(os.stat(instance.socket_path).st_mode & 0o777) == "0o600"
        # the runtime files carry the app's env (secrets too): root only
        idir = Path(instance.dir)
        assert oct(idir.stat().st_mode & 0o777) == "0o700"
        for private in (idir / "instance.json", idir / "bundle" / "config.json"):
            assert oct(private.stat().st_mode & 0o777) == "0o600", private
        # and so does its workload identity (the SVID's private key above all)
        assert oct((idir / "identity").stat().st_mode & 0o777) == "0o700"
        for name in ("svid.key", "svid.crt", "ca.crt", "svid.json"):
            private = idir / "identity" / name
            assert oct(private.stat().st_mode & 0o777) == "0o600", private
    finally:
        manager.stop(instance)


def test_failed_release_never_gets_traffic(manager: InstanceManager, flask_image: str,
                                           gateway: UpstreamTLS) -> None:
    routes = Routes()

    async def scenario() -> None:
        sup = Supervisor(manager, routes, backoff_s=1.0, tls=gateway)
        good = RolloutPlan("roll", 1, flask_image, FAST, {"web": 1}, {})
        await rollout(sup, good)
        serving = routes.ready("roll")
        assert [e["release"] for e in serving] == [1]
        broken_spec = AppSpec(health_path="/no-such-path", startup=Probe(0.2, 1, 40),
                              readiness=FAST.readiness, liveness=FAST.liveness, grace_s=5,
                              drain_s=0.5)
        with pytest.raises(DeployError) as err:
            await rollout(sup, RolloutPlan("roll", 2, flask_image, broken_spec, {"web": 1}, {}))
        assert "404" in str(err.value) and "last log lines" in str(err.value)
        assert [e["release"] for e in routes.ready("roll")] == [1]
        assert _status(serving[0]["socket_path"], gateway) == 200
        for slot in sup.for_app("roll"):
            await sup.stop(slot)

    asyncio.run(scenario())
