"""Per-instance resource usage from the kernel's cgroups, as OTel metric rows.

For each live instance :class:`UsageSampler` finds the container's cgroups through
``/proc/<init pid>/cgroup`` (the pid from ``runc state``, the runtime's public interface) and
reads, on cgroup v2, ``cpu.stat`` ``usage_usec`` and ``memory.current``; on cgroup v1,
``cpuacct.usage`` (ns) and ``memory.usage_in_bytes``. Each :meth:`UsageSampler.sample` returns
rows for ``otel_metrics_sum`` and ``otel_metrics_gauge`` (OTel semantic-convention names):

=============================  =====  ======  ====================================================
metric                         table  unit    value
=============================  =====  ======  ====================================================
``container.cpu.time``         sum    s       CPU seconds since the instance started (cumulative)
``container.cpu.utilization``  gauge  1       CPU used since the previous sample / wall time /
                                              the instance's CPU limit in cores (0…1)
``container.memory.usage``     gauge  By      memory charged to the instance now
``noops.instance.restarts``    sum    {restart} restarts of the slot (from the supervisor)
=============================  =====  ======  ====================================================

``ServiceName`` is the app; ``Attributes`` carry ``service.instance.id``, ``noops.instance.id``
and ``noops.process``;
``ResourceAttributes`` add ``service.version`` (``v<release>``). An instance that vanished
between listing and reading is skipped.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["InstanceUsage", "UsageSampler", "read_usage"]

Row = dict[str, Any]
_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class InstanceUsage:
    """One live instance as the supervisor sees it."""

    id: str
    app: str
    process: str
    release: int
    started_at: float  # Unix seconds
    cpu_millis: int
    restarts: int


def _cgroup_dirs(pid: int) -> dict[str, Path]:
    """Controller → cgroup directory of ``pid`` (``""`` is the unified v2 hierarchy)."""
    out: dict[str, Path] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if not controllers:
            out[""] = _CGROUP_ROOT / rel if (_CGROUP_ROOT / "cgroup.controllers").exists() \
                else _CGROUP_ROOT / "unified" / rel
        for name in controllers.split(","):
            out[name] = _CGROUP_ROOT / name / rel
    return out


def read_usage(pid: int) -> tuple[int, int] | None:
    """``(cpu_ns, memory_bytes)`` of the cgroup ``pid`` is in; None when it cannot be read."""
    try:
        dirs = _cgroup_dirs(pid)
        if "memory" in dirs and (dirs["memory"] / "memory.usage_in_bytes").exists():
            cpu_dir = dirs.get("cpuacct") or dirs["cpu"]
            cpu_ns = int((cpu_dir / "cpuacct.usage").read_text())
            memory = int((dirs["memory"] / "memory.usage_in_bytes").read_text())
            return cpu_ns, memory
        unified = dirs[""]
        stat = dict(line.split(" ", 1) for line in
                    (unified / "cpu.stat").read_text().splitlines() if " " in line)
        return int(stat["usage_usec"]) * 1000, int((unified / "memory.current").read_text())
    except (OSError, KeyError, ValueError):
        return None


class UsageSampler:
    """Samples instances; remembers each one's previous CPU reading for the utilisation."""

    def __init__(self, runc: str, runc_root: Path) -> None:
        self.runc, self.runc_root = runc, runc_root
        self._pids: dict[str, int] = {}
        self._last: dict[str, tuple[float, int]] = {}

    def _pid(self, instance_id: str) -> int | None:
        pid = self._pids.get(instance_id)
        if pid is not None and Path(f"/proc/{pid}").exists():
            return pid
        try:
            result = subprocess.run([self.runc, "--root", str(self.runc_root), "state",
                                     instance_id], capture_output=True, text=True, check=False,
                                    timeout=5)
        except subprocess.TimeoutExpired:  # a hung runc must not stall the usage loop
            return None
        if result.returncode != 0:
            return None
        try:
            pid = int(json.loads(result.stdout)["pid"])
        except (ValueError, KeyError, TypeError):
            return None
        if pid <= 0:
            return None
        self._pids[instance_id] = pid
        return pid

    def sample(self, instances: list[InstanceUsage]) -> dict[str, list[Row]]:
        """Rows for ``otel_metrics_sum`` and ``otel_metrics_gauge`` (keys ``sum``, ``gauge``)."""
        now = time.time()
        now_ns = int(now * 1e9)
        sums: list[Row] = []
        gauges: list[Row] = []
        live = {i.id for i in instances}
        for gone in set(self._last) - live:
            self._last.pop(gone, None)
            self._pids.pop(gone, None)
        for inst in instances:
            attrs = {"service.instance.id": inst.id, "noops.instance.id": inst.id,
                     "noops.process": inst.process}
            head = {"ServiceName": inst.app, "ScopeName": "noops.runtime",
                    "ResourceAttributes": {"service.name": inst.app,
                                           "service.version": f"v{inst.release}",
                                           **attrs},
                    "Attributes": attrs, "TimeUnix": now_ns,
                    "StartTimeUnix": int(inst.started_at * 1e9)}
            sums.append({**head, "MetricName": "noops.instance.restarts",
                         "MetricDescription": "Restarts of the instance's slot",
                         "MetricUnit": "{restart}", "Value": float(inst.restarts),
                         "AggregationTemporality": 2, "IsMonotonic": True})
            pid = self._pid(inst.id)
            usage = read_usage(pid) if pid is not None else None
            if usage is None:
                continue
            cpu_ns, memory = usage
            sums.append({**head, "MetricName": "container.cpu.time",
                         "MetricDescription": "CPU time used by the instance",
                         "MetricUnit": "s", "Value": cpu_ns / 1e9,
                         "AggregationTemporality": 2, "IsMonotonic": True})
            gauges.append({**head, "MetricName": "container.memory.usage",
                           "MetricDescription": "Memory charged to the instance",
                           "MetricUnit": "By", "Value": float(memory)})
            previous = self._last.get(inst.id)
            self._last[inst.id] = (now, cpu_ns)
            if previous is not None and now > previous[0] and cpu_ns >= previous[1]:
                cores = max(inst.cpu_millis, 1) / 1000
                used = (cpu_ns - previous[1]) / 1e9 / (now - previous[0]) / cores
                gauges.append({**head, "MetricName": "container.cpu.utilization",
                               "MetricDescription": "CPU used / CPU limit since the last sample",
                               "MetricUnit": "1", "Value": used})
        return {"sum": sums, "gauge": gauges}
