"""Network namespaces for instances: one per instance, loopback only.

An instance's port is reachable only inside its namespace; the platform reaches it through the
instance monitor's Unix socket (see :mod:`noops.runtime.monitor`), never through a host port.
Namespaces are named ``noops-<instance id>`` and live under ``/run/netns`` (``ip netns``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from noops.errors import ContainerError, ToolMissingError

__all__ = ["NETNS_DIR", "create", "delete", "enter", "exists", "path"]

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def _ip(*args: str) -> None:
    if shutil.which("ip") is None:
        raise ToolMissingError("ip", "iproute2", "instances get their own network namespace")
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ContainerError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def create(name: str) -> Path:
    """Create the namespace with only ``lo`` (up); idempotent."""
    if not exists(name):
        _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    return path(name)


def delete(name: str) -> None:
    if exists(name):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def enter(name: str) -> None:
    """Move the calling thread (the whole process if single-threaded) into the namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise ContainerError(f"setns into {name} failed: {os.strerror(err)}")
    finally:
        os.close(fd)
