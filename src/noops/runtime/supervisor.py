"""The supervisor: keeps each app's instances running, healthy and routed.

A *slot* is one wanted instance (app, release, process type, index). Its watch task follows the
Kubernetes contract: the startup probe gates everything (a deploy waits on it), the readiness
probe gates routing, the liveness probe restarts. A crash or a failed liveness check restarts the
instance after a back-off that starts at ``backoff_s`` (10 s), doubles up to ``max_backoff_s``
(300 s) and resets after ``reset_after_s`` (10 min) of health. Stops are graceful: out of the
routes first, then SIGTERM, then SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from noops.appspec import AppSpec
from noops.runtime.health import ProbeResult, probe_once, wait_until
from noops.runtime.identity import ProbeTLS
from noops.runtime.instances import Instance, InstanceManager, InstanceSpec

__all__ = ["RouteSink", "Slot", "Supervisor"]

log = logging.getLogger("noops.runtime")


class RouteSink(Protocol):
    """Where the supervisor publishes which instance sockets serve which hosts (the gateway)."""

    def publish(self, app: str, hosts: Sequence[str],
                endpoints: Sequence[dict[str, Any]]) -> None: ...


@dataclass
class Slot:
    app: str
    release: int
    process_type: str
    index: int
    ispec: InstanceSpec
    spec: AppSpec
    instance: Instance | None = None
    ready: bool = False
    draining: bool = False
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)
    backoff_s: float = 0.0
    healthy_since: float | None = None
    last_check: str = ""
    task: asyncio.Task[None] | None = None
    stopping: bool = False

    @property
    def key(self) -> str:
        return f"{self.app}/{self.process_type}/{self.release}/{self.index}"

    def to_json(self) -> dict[str, Any]:
        inst = self.instance
        return {"app": self.app, "release": self.release, "process": self.process_type,
                "index": self.index, "instance": inst.id if inst else None,
                "state": self.state, "ready": self.ready, "draining": self.draining,
                "restarts": self.restarts, "restart_times": self.restart_times,
                "exits": self.exits[-5:], "last_check": self.last_check,
                "started_at": inst.started_at if inst else None,
                "log_path": inst.log_path if inst else None}

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.instance is None:
            return "backoff" if self.restarts else "starting"
        if self.draining:
            return "draining"
        return "ready" if self.ready else "unready"


class Supervisor:
    def __init__(self, manager: InstanceManager, routes: RouteSink, *, backoff_s: float = 10.0,
                 max_backoff_s: float = 300.0, reset_after_s: float = 600.0,
                 hosts_for: Callable[[str, AppSpec], Sequence[str]] | None = None,
                 on_event: Callable[[str, str, str, dict[str, Any]], None] | None = None,
                 tls: ProbeTLS | None = None) -> None:
        self.manager, self.routes = manager, routes
        self.tls = tls  # how probes dial instance sockets (as the gateway, over mTLS)
        self.backoff_s, self.max_backoff_s, self.reset_after_s = backoff_s, max_backoff_s, reset_after_s
        self.slots: dict[str, Slot] = {}
        self._hosts_for = hosts_for or (lambda app, spec: [f"{app}.localhost", *spec.hosts])
        self._on_event = on_event or (lambda *_a: None)

    # -- routing -------------------------------------------------------------------------
    def publish(self, app: str) -> None:
        slots = [s for s in self.slots.values() if s.app == app and s.process_type == "web"]
        spec = max(slots, key=lambda s: s.release).spec if slots else AppSpec()
        endpoints = [{"id": s.instance.id, "app": app, "socket_path": s.instance.socket_path,
                      "ready": s.ready, "draining": s.draining, "release": s.release,
                      "spiffe_id": s.instance.spiffe_id}
                     for s in slots if s.instance is not None]
        self.routes.publish(app, self._hosts_for(app, spec), endpoints)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, app: str, release: int, process_type: str, index: int,
                    ispec: InstanceSpec, spec: AppSpec) -> tuple[Slot, ProbeResult]:
        """Start one instance and wait for its startup and readiness checks (web only)."""
        slot = Slot(app, release, process_type, index, ispec, spec)
        self.slots[slot.key] = slot
        result = await self._boot(slot)
        if result.ok:
            slot.task = asyncio.create_task(self._watch(slot), name=f"watch {slot.key}")
        return slot, result

    def adopt(self, instance: Instance, spec: AppSpec, index: int) -> Slot:
        """Take over an instance that survived a daemon restart; it is watched, not restarted."""
        s = instance.spec
        slot = Slot(s.app, s.release, s.process_type, index, s, spec, instance=instance,
                    ready=True, healthy_since=time.time())
        self.slots[slot.key] = slot
        slot.task = asyncio.create_task(self._watch(slot), name=f"watch {slot.key}")
        return slot

    async def _boot(self, slot: Slot) -> ProbeResult:
        instance = await asyncio.to_thread(self.manager.start, slot.ispec)
        slot.instance, slot.ready = instance, False
        if slot.process_type != "web":
            await asyncio.sleep(0.5)
            ok = instance.alive()
            return ProbeResult(ok, "running" if ok else "exited right after start")
        host = f"{slot.app}.localhost"
        startup = await wait_until(instance.socket_path, slot.spec.health_path, host,
                                   slot.spec.startup, alive=instance.alive, tls=self.tls,
                                   peer_id=instance.spiffe_id)
        slot.last_check = f"startup: {startup.detail}"
        if not startup.ok:
            return startup
        ready = await wait_until(instance.socket_path, slot.spec.health_path, host,
                                 slot.spec.readiness, alive=instance.alive, tls=self.tls,
                                 peer_id=instance.spiffe_id)
        slot.last_check = f"readiness: {ready.detail}"
        slot.ready = ready.ok
        slot.healthy_since = time.time() if ready.ok else None
        self.publish(slot.app)
        return ready

    async def _watch(self, slot: Slot) -> None:
        """Crash → restart with back-off; liveness failures → restart; readiness → routes."""
        next_live = next_ready = 0.0
        live_failures = ready_failures = ready_successes = 0
        while not slot.stopping:
            inst = slot.instance
            if inst is None or not inst.alive():
                await self._restart(slot, "crashed")
                next_live = next_ready = 0.0
                continue
            now = time.monotonic()
            if slot.healthy_since and time.time() - slot.healthy_since > self.reset_after_s:
                slot.backoff_s = 0.0
            if slot.process_type == "web" and now >= next_ready:
                next_ready = now + slot.spec.readiness.period_s
                res = await probe_once(inst.socket_path, slot.spec.health_path,
                                       f"{slot.app}.localhost", slot.spec.readiness.timeout_s,
                                       self.tls, inst.spiffe_id)
                ready_failures, ready_successes = ((0, ready_successes + 1) if res.ok
                                                   else (ready_failures + 1, 0))
                was = slot.ready
                if not res.ok and ready_failures >= slot.spec.readiness.failures:
                    slot.ready = False
                elif res.ok and ready_successes >= slot.spec.readiness.successes:
                    slot.ready = True
                if was != slot.ready:
                    slot.last_check = f"readiness: {res.detail}"
                    self.publish(slot.app)
            if slot.process_type == "web" and now >= next_live:
                next_live = now + slot.spec.liveness.period_s
                res = await probe_once(inst.socket_path, slot.spec.health_path,
                                       f"{slot.app}.localhost", slot.spec.liveness.timeout_s,
                                       self.tls, inst.spiffe_id)
                live_failures = 0 if res.ok else live_failures + 1
                if live_failures >= slot.spec.liveness.failures:
                    slot.last_check = f"liveness: {res.detail}"
                    await self._restart(slot, f"liveness check failed: {res.detail}", kill=True)
                    live_failures = 0
                    continue
            await asyncio.sleep(0.2)

    async def _restart(self, slot: Slot, why: str, *, kill: bool = False) -> None:
        old = slot.instance
        slot.ready, slot.healthy_since = False, None
        self.publish(slot.app)
        status: dict[str, Any] = {}
        if old is not None:
            status = await asyncio.to_thread(self.manager.stop, old, wait_s=slot.spec.grace_s
                                             if kill else 1.0)
        slot.exits.append({"at": time.time(), "exit_code": status.get("exit_code"), "why": why})
        slot.instance = None
        slot.backoff_s = (self.backoff_s if slot.backoff_s == 0
                          else min(slot.backoff_s * 2, self.max_backoff_s))
        self._on_event(slot.app, "restart", f"{slot.key} {why}; restarting in {slot.backoff_s:g}s",
                       {"exit_code": status.get("exit_code"), "backoff_s": slot.backoff_s})
        log.warning("%s %s (exit %s); restart in %ss", slot.key, why, status.get("exit_code"),
                    slot.backoff_s)
        await asyncio.sleep(slot.backoff_s)
        if slot.stopping:
            return
        slot.restarts += 1
        slot.restart_times.append(time.time())
        result = await self._boot(slot)
        if not result.ok:
            slot.last_check = f"after restart: {result.detail}"

    async def stop(self, slot: Slot, *, drain_s: float = 0.0) -> None:
        """Out of the routes (draining), wait ``drain_s``, then stop gracefully."""
        slot.draining = True
        self.publish(slot.app)
        if drain_s > 0:
            await asyncio.sleep(drain_s)
        slot.stopping = True
        if slot.task is not None:
            slot.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slot.task
        if slot.instance is not None:
            await asyncio.to_thread(self.manager.stop, slot.instance)
        self.slots.pop(slot.key, None)
        self.publish(slot.app)

    def for_app(self, app: str) -> list[Slot]:
        return sorted((s for s in self.slots.values() if s.app == app),
                      key=lambda s: (s.process_type, s.release, s.index))
