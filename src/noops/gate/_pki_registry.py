"""The CA's memory: enrolled devices and revoked serials, one JSON file in the CA directory.

``registry.json`` (0600)::

    {"devices": [{"serial": "<hex>", "user": "alice", "name": "laptop",
                  "issued": "<iso>", "not_after": "<iso>"}],
     "revoked": {"<hex>": {"reason": "lost", "revoked_at": "<iso>", "not_after": "<iso>"}}}

Writers take an exclusive ``flock`` on ``.registry.lock``, re-read, change and replace the file
atomically (temporary file + rename), so a ``noops device revoke`` in one process and a gateway
reading in another never see half a file. Readers re-read whenever the file's inode, size or
mtime changed: a revocation is visible to the next check in every process, with no restart.
Revocations are dropped once the revoked certificate has expired anyway.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from noops.gate._pki_certs import PkiError, write_atomic

Data = dict[str, Any]
_NONE_REVOKED: frozenset[int] = frozenset()  # one object: revoked() callers compare with ``is``


class Registry:
    """Devices and revocations of one CA directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "registry.json"
        self._lock_path = directory / ".registry.lock"
        self._stamp: tuple[int, int, int] | None = None
        self._data: Data = {"devices": [], "revoked": {}}
        self._revoked = _NONE_REVOKED

    def read(self) -> Data:
        """The current contents (cached until the file changes)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None or self._revoked:
                self._stamp, self._data, self._revoked = None, {"devices": [], "revoked": {}}, _NONE_REVOKED
            return self._data
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._data = self._load()
            self._revoked = frozenset(int(s, 16) for s in self._data["revoked"])
            self._stamp = stamp
        return self._data

    def revoked(self) -> frozenset[int]:
        self.read()
        return self._revoked

    def update(self, change: Callable[[Data], None], now: datetime.datetime) -> Data:
        """Apply ``change`` to a fresh copy under the lock, prune expired revocations, save."""
        with self._locked():
            data = self._load() if self.path.exists() else {"devices": [], "revoked": {}}
            change(data)
            data["revoked"] = {serial: entry for serial, entry in data["revoked"].items()
                               if datetime.datetime.fromisoformat(entry["not_after"]) > now}
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            try:
                write_atomic(self.path, text.encode(), 0o600)
            except OSError as exc:
                raise PkiError(f"cannot write {self.path}: {exc.strerror}; check the CA "
                               "directory is writable.") from exc
        self.read()
        return data

    def _load(self) -> Data:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read {self.path}: {exc}; restore it from backup (revocations "
                           "would otherwise be lost).") from exc
        if not isinstance(data, dict) or not isinstance(data.get("devices"), list) \
                or not isinstance(data.get("revoked"), dict):
            raise PkiError(f"{self.path} is not a noops CA registry; restore it from backup.")
        return data

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
