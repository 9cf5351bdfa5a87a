"""OCI runtime bundles and runc: the one container engine noops drives.

:func:`write_config` turns a :class:`ContainerSpec` into a runtime-spec ``config.json`` (the shape
``runc spec`` produces, hardened: no capabilities for non-root processes, ``noNewPrivileges``,
masked ``/proc`` paths, private ``/tmp``); :class:`Runc` runs bundles in the foreground with stdio
passed through, and always deletes what it created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from noops.errors import ContainerError, ToolMissingError

__all__ = ["ContainerSpec", "Mount", "Runc", "write_config"]

_MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi",
]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
_ROOT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
]


@dataclass(frozen=True)
class Mount:
    destination: str
    source: str
    type: str = "bind"
    options: tuple[str, ...] = ("rbind", "ro")

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "type": self.type, "source": self.source,
                "options": list(self.options)}


@dataclass
class ContainerSpec:
    """What to run and how. Defaults are the safe ones: non-root, read-only root, no caps."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    uid: int = 1000
    gid: int = 1000
    readonly_rootfs: bool = True
    mounts: list[Mount] = field(default_factory=list)
    host_network: bool = False
    netns_path: str | None = None
    hostname: str = "noops"
    memory_bytes: int | None = None
    cpu_millis: int | None = None
    pids_limit: int | None = 4096
    tmp_size: str = "256m"


def write_config(bundle: Path, rootfs: Path, spec: ContainerSpec) -> Path:
    namespaces: list[dict[str, str]] = [
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
    ]
    if spec.netns_path:
        namespaces.append({"type": "network", "path": spec.netns_path})
    elif not spec.host_network:
        namespaces.append({"type": "network"})
    caps = _ROOT_CAPS if spec.uid == 0 else []
    mounts = [
        Mount("/proc", "proc", "proc", ()),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        Mount("/dev/pts", "devpts", "devpts",
              ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620")),
        Mount("/dev/shm", "shm", "tmpfs", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
        Mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        Mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
        Mount("/tmp", "tmpfs", "tmpfs", ("nosuid", "nodev", "mode=1777", f"size={spec.tmp_size}")),
        *spec.mounts,
    ]
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if spec.memory_bytes:
        resources["memory"] = {"limit": spec.memory_bytes}
    if spec.cpu_millis:
        resources["cpu"] = {"quota": spec.cpu_millis * 100, "period": 100_000}
    if spec.pids_limit:
        resources["pids"] = {"limit": spec.pids_limit}
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid},
            "args": list(spec.args),
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": spec.readonly_rootfs},
        "hostname": spec.hostname,
        "mounts": [m.to_json() for m in mounts],
        "linux": {
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": _MASKED,
            "readonlyPaths": _READONLY,
        },
    }
    bundle.mkdir(parents=True, exist_ok=True)
    path = bundle / "config.json"
    # 0600: the process env may hold the app's secrets
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(config, indent=2))
    return path


class Runc:
    """A thin driver for the runc binary; state lives under ``state_root``."""

    def __init__(self, binary: str = "runc", state_root: Path = Path("/run/noops/runc")) -> None:
        found = shutil.which(binary)
        if found is None:
            raise ToolMissingError("runc", "runc", "noops runs every build step and app under runc")
        self.binary = found
        self.state_root = state_root
        state_root.mkdir(parents=True, exist_ok=True)

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_root), *args]

    def run(self, bundle: Path, container_id: str, *, stdout: int | IO[bytes] | None = None,
            stderr: int | IO[bytes] | None = None, stdin: int | None = subprocess.DEVNULL) -> int:
        """Run the bundle in the foreground; return the process's exit code. Deletes after."""
        try:
            proc = subprocess.Popen(
                self._cmd("run", "--bundle", str(bundle), container_id),
                stdin=stdin, stdout=stdout, stderr=stderr,
            )
            try:
                return proc.wait()
            except BaseException:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.kill(container_id, "KILL")
                    proc.wait()
                raise
        except OSError as exc:
            raise ContainerError(f"could not start runc: {exc}") from exc
        finally:
            self.delete(container_id)

    def popen(self, bundle: Path, container_id: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``runc run`` and return the process (runc forwards signals to the container)."""
        return subprocess.Popen(self._cmd("run", "--bundle", str(bundle), container_id), **kwargs)

    def kill(self, container_id: str, signal: str = "TERM") -> None:
        subprocess.run(self._cmd("kill", container_id, signal), capture_output=True, check=False)

    def delete(self, container_id: str) -> None:
        subprocess.run(self._cmd("delete", "--force", container_id), capture_output=True,
                       check=False)
