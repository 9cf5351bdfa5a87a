"""Secret values encrypted at rest: AES-256-GCM with a key file under ``$NOOPS_HOME``.

A sealed value is ``01 | key id (8 bytes) | nonce (12 random bytes) | ciphertext + tag``. The
associated data binds it to its app and key name, so a ciphertext copied onto another key or
app does not decrypt. The key id (a hash of the key, not the key) lets a wrong key file be told
apart from a tampered value in the error message.

The key file holds 32 random bytes, mode 0600. It is created on first use (atomically: two
daemons starting at once end up with the same key) and refused when group or others may read
it. Every replica sharing one PostgreSQL database needs a copy of the same file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from noops.state.errors import StateError

__all__ = ["SecretBox"]

_FORMAT = b"\x01"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_ID_BYTES = 8


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"noops secret key id\0" + key).digest()[:_ID_BYTES]


def _create_key(path: Path) -> None:
    """Write a new key next to ``path`` and link it into place; losing the race is fine."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(_KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load_key(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        _create_key(path)
        info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise StateError(f"the secret key {path} has mode {mode:04o}; it must be readable by its "
                         f"owner only. Run `chmod 600 {path}`.")
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise StateError(f"the secret key {path} holds {len(key)} bytes, not {_KEY_BYTES}: it is "
                         "damaged. Restore it from a backup (secrets cannot be read without it).")
    return key


def _associated_data(header: bytes, app: str, key: str) -> bytes:
    # App names and config keys cannot contain NUL, so this encoding is unambiguous.
    return header + b"noops secret\0" + app.encode() + b"\0" + key.encode()


class SecretBox:
    """Seals and opens secret values with the key at ``key_path`` (created 0600 if missing)."""

    def __init__(self, key_path: Path | str) -> None:
        self.key_path = Path(key_path)
        key = _load_key(self.key_path)
        self._aead = AESGCM(key)
        self._key_id = _key_id(key)

    def seal(self, app: str, key: str, value: str) -> bytes:
        header = _FORMAT + self._key_id
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), _associated_data(header, app, key))
        return header + nonce + sealed

    def open(self, app: str, key: str, blob: bytes) -> str:
        head = len(_FORMAT) + _ID_BYTES
        if len(blob) < head + _NONCE_BYTES + 16 or blob[:1] != _FORMAT:
            raise StateError(f"secret {key} of app {app} is not a sealed value noops wrote: the "
                             "state database was modified outside noops. Set the secret again.")
        header, key_id = blob[:head], blob[1:head]
        if key_id != self._key_id:
            raise StateError(f"secret {key} of app {app} was sealed with another key (id "
                             f"{key_id.hex()}) than {self.key_path} (id {self._key_id.hex()}): "
                             "use the key file the secrets were written with (every replica "
                             "needs the same one).")
        nonce = blob[head:head + _NONCE_BYTES]
        try:
            plain = self._aead.decrypt(nonce, blob[head + _NONCE_BYTES:],
                                       _associated_data(header, app, key))
        except InvalidTag as exc:
            raise StateError(f"secret {key} of app {app} failed its integrity check: the stored "
                             "value was tampered with or moved from another app or key. Set the "
                             "secret again.") from exc
        return plain.decode()
