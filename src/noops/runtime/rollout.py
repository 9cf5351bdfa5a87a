"""Zero-downtime rollouts: new instances up and ready, traffic shifted, old ones drained.

Order, per process type: start the new release's instances; wait for each one's startup and
readiness checks; publish them to the routes (the old ones still serve); mark the old ones
draining (no new requests, in-flight requests finish); after ``drain_s``, stop them gracefully.
A new instance that fails its checks never receives traffic: the new ones are stopped, the old
release keeps serving, and :class:`DeployError` carries the reason and its last log lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from noops.appspec import AppSpec
from noops.errors import NoopsError
from noops.runtime.instances import InstanceSpec
from noops.runtime.supervisor import Slot, Supervisor

__all__ = ["DeployError", "RolloutPlan", "rollout", "tail"]


class DeployError(NoopsError):
    exit_code = 11
    http_status = 422


@dataclass(frozen=True)
class RolloutPlan:
    app: str
    release: int
    image_digest: str
    spec: AppSpec
    formation: Mapping[str, int]
    env: Mapping[str, str]


def tail(path: str | None, lines: int = 20) -> str:
    if not path or not Path(path).exists():
        return "(no log lines)"
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        data = fh.read().decode(errors="replace").splitlines()
    return "\n".join(data[-lines:]) or "(no log lines)"


async def rollout(sup: Supervisor, plan: RolloutPlan) -> list[Slot]:
    """Bring ``plan`` up beside whatever runs now; retire the old slots only once it is ready."""
    old = [s for s in sup.for_app(plan.app) if s.release != plan.release]
    started: list[Slot] = []
    failures: list[str] = []

    async def one(process_type: str, index: int) -> None:
        ispec = InstanceSpec(plan.app, plan.release, process_type, plan.image_digest,
                             dict(plan.env), plan.spec.memory_bytes, plan.spec.cpu_millis,
                             grace_s=plan.spec.grace_s, telemetry=plan.spec.telemetry)
        slot, result = await sup.start(plan.app, plan.release, process_type, index, ispec,
                                       plan.spec)
        started.append(slot)
        if not result.ok:
            log_path = slot.instance.log_path if slot.instance else None
            failures.append(f"{process_type}.{index}: {result.detail}\n"
                            f"last log lines:\n{tail(log_path)}")

    await asyncio.gather(*(one(pt, i) for pt, n in plan.formation.items() for i in range(n)))
    if failures:
        await asyncio.gather(*(sup.stop(s) for s in started))
        raise DeployError(
            f"release v{plan.release} of {plan.app} failed its health checks and never received "
            f"traffic; v{old[0].release if old else '-'} keeps serving.\n" + "\n".join(failures)
        )
    sup.publish(plan.app)
    await asyncio.gather(*(sup.stop(s, drain_s=plan.spec.drain_s) for s in old))
    return started
