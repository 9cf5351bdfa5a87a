"""The identity provider the gateway signs browsers in with: ``$NOOPS_HOME/gate/oidc.toml``.

``noops oidc set`` writes it (mode 0600): the issuer, the client id, the button's name, the
scopes, how often sign-ins are checked with the provider (:mod:`._pep_refresh`), and the client
secret **sealed** (AES-256-GCM with the gateway's own key
``gate/secret.key``, bound to this file's purpose), so the secret is never on disk in clear.
A hand-written file with a clear ``client_secret`` is still read, with a warning that says how
to seal it. The front door reads the file again whenever it changes (:class:`OidcWatcher`).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from noops.gate._errors import GateError
from noops.state.errors import StateError
from noops.state.secrets import SecretBox

__all__ = ["OidcConfig", "OidcWatcher", "load_oidc", "save_oidc", "secret_key_path"]

log = logging.getLogger("noops.gate")

DEFAULT_SCOPES = ("openid", "email", "profile")
DEFAULT_REFRESH_S = 300.0
_SEAL_APP, _SEAL_KEY = "gate", "oidc.client_secret"  # what the sealed value is bound to


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    name: str = "your identity provider"
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    refresh_s: float = DEFAULT_REFRESH_S  # how often a sign-in is checked with the provider
    sealed: bool = True  # False: the file holds the secret in clear (hand-written)


def secret_key_path(path: Path) -> Path:
    """The gateway's sealing key, next to ``oidc.toml``."""
    return path.parent / "secret.key"


def save_oidc(path: Path, config: OidcConfig) -> None:
    """Write ``config`` to ``path`` (0600, atomically) with its client secret sealed."""
    box = SecretBox(secret_key_path(path))
    data = {"issuer": config.issuer, "client_id": config.client_id, "name": config.name,
            "scopes": list(config.scopes), "refresh_s": config.refresh_s,
            "client_secret_sealed": base64.b64encode(
                box.seal(_SEAL_APP, _SEAL_KEY, config.client_secret)).decode()}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        tomli_w.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load_oidc(path: Path) -> OidcConfig | None:
    """The configured provider, or ``None`` when there is no file. Raises :class:`GateError`
    naming the fix for a file that is not valid."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GateError(f"{path}: {exc}; fix the file or write it again with `noops oidc set`") from exc
    for key in ("issuer", "client_id"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise GateError(f"{path}: {key} is required (a string); fix the file or run `noops oidc set`")
    sealed = data.get("client_secret_sealed")
    if isinstance(sealed, str):
        try:
            secret = SecretBox(secret_key_path(path)).open(_SEAL_APP, _SEAL_KEY, base64.b64decode(sealed))
        except (StateError, ValueError) as exc:
            raise GateError(f"{path}: the client secret cannot be opened with "
                            f"{secret_key_path(path)} ({exc}); run `noops oidc set` again") from exc
    elif isinstance(data.get("client_secret"), str):
        secret = data["client_secret"]
        log.warning("%s holds the OIDC client secret in clear: `noops oidc set` seals it", path)
    else:
        raise GateError(f"{path}: no client secret; run `noops oidc set`")
    scopes = data.get("scopes", list(DEFAULT_SCOPES))
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise GateError(f"{path}: scopes must be a list of strings")
    name = data.get("name", "your identity provider")
    if not isinstance(name, str):
        raise GateError(f"{path}: name must be a string")
    refresh_s = data.get("refresh_s", DEFAULT_REFRESH_S)
    if not isinstance(refresh_s, int | float) or isinstance(refresh_s, bool) or refresh_s <= 0:
        raise GateError(f"{path}: refresh_s must be a number of seconds above 0")
    return OidcConfig(data["issuer"], data["client_id"], secret, name, tuple(scopes),
                      float(refresh_s), sealed=isinstance(sealed, str))


class OidcWatcher:
    """``current()`` is the file's configuration, read again when it changed; a
    file that became invalid keeps the last good configuration (and logs why)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._config: OidcConfig | None = None
        self.changes = 0  # how often a new configuration was taken (callers drop their caches)
        self._lock = threading.Lock()  # the loop and the refresher's thread both read it
        self._reload(at_start=True)  # at start an invalid file is an error

    def current(self) -> OidcConfig | None:
        with self._lock:
            self._reload(at_start=False)
            return self._config

    def _reload(self, *, at_start: bool) -> None:
        try:
            st = self.path.stat()
            # the inode too: `noops oidc set` replaces the file, so each write is seen
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        try:
            config = load_oidc(self.path)
        except GateError:
            if at_start:
                raise
            log.exception("identity provider configuration not reloaded")
            self._stamp = stamp  # logged once; the next change is read again
            return
        self._stamp, self._config = stamp, config
        self.changes += 1
