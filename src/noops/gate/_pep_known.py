"""Networks and devices each user has already proven themselves from (the ``new_network`` and
``new_device`` signals).

A network (an IPv4 /24 or IPv6 /64) or a device certificate becomes *known* for a user only
after a second factor succeeded from it (TOTP step-up, or an OIDC login with MFA): a stolen
password alone cannot make a place look familiar. Kept in ``known.json`` (0600), rewritten
atomically on change; bounded per user.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import threading
from pathlib import Path

__all__ = ["KnownPlaces", "network_of"]

_MAX_PER_USER = 64


@functools.lru_cache(maxsize=4096)
def network_of(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) an address belongs to; the text itself if not an address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class KnownPlaces:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        self._networks: dict[str, list[str]] = dict(data.get("networks", {}))
        self._devices: dict[str, list[str]] = dict(data.get("devices", {}))

    def network_known(self, user: str, ip: str) -> bool:
        return network_of(ip) in self._networks.get(user, ())

    def device_known(self, user: str, serial: int) -> bool:
        return f"{serial:x}" in self._devices.get(user, ())

    def learn(self, user: str, ip: str, serial: int | None) -> None:
        """Remember ``ip``'s network (and the device) for ``user`` after a second factor."""
        with self._lock:
            changed = _add(self._networks, user, network_of(ip))
            if serial is not None:
                changed |= _add(self._devices, user, f"{serial:x}")
            if changed:
                self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"networks": self._networks, "devices": self._devices}, fh)
        os.replace(tmp, self.path)


def _add(table: dict[str, list[str]], user: str, item: str) -> bool:
    items = table.setdefault(user, [])
    if item in items:
        return False
    items.append(item)
    del items[:-_MAX_PER_USER]
    return True
