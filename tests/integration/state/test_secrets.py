"""Secrets at rest: never in clear text, bound to their app and key, unreadable with another key."""

from __future__ import annotations

import os
import secrets
import stat

import pytest

from noops.state import SecretBox, StateError

pytestmark = pytest.mark.state


def _sealed_row(backend, app: str, key: str) -> bytes:
    rows = backend.execute("SELECT sealed FROM secret_vars WHERE app = ? AND key = ? "
                           "ORDER BY version DESC", (app, key))
    return bytes(rows[0][0])


def test_secret_values_are_not_stored_in_clear_text(backend, state):
    state.create_app("shop")
    secret = "s3cret-" + secrets.token_hex(16)
    plain = "plain-" + secrets.token_hex(16)
    state.set_config("shop", {"VISIBLE": plain})
    state.set_secrets("shop", {"DB_PASSWORD": secret, "TOKEN": secret + "-2"})
    state.set_secrets("shop", {"OTHER": "x"})  # copies the sealed values into a new version
    new_release_event = {"note": "no secrets here"}
    state.add_event("shop", "config", "secrets changed: DB_PASSWORD, TOKEN", new_release_event)

    stored = backend.stored_bytes()
    assert plain.encode() in stored, "the scan must see what the backend stores"
    assert secret.encode() not in stored
    assert secret.encode("utf-16-le") not in stored
    assert secret.encode().hex().encode() not in stored
    assert state.secrets("shop")["DB_PASSWORD"] == secret


def test_same_value_twice_seals_differently(backend, state):
    state.create_app("shop")
    state.set_secrets("shop", {"A": "same", "B": "same"})
    a, b = _sealed_row(backend, "shop", "A"), _sealed_row(backend, "shop", "B")
    assert a != b
    assert a[9:21] != b[9:21]  # random nonces


def test_tampered_ciphertext_fails_with_a_clear_error(backend, state):
    state.create_app("shop")
    state.set_secrets("shop", {"DB_PASSWORD": "hunter2"})
    sealed = bytearray(_sealed_row(backend, "shop", "DB_PASSWORD"))
    sealed[-1] ^= 0x01
    backend.execute("UPDATE secret_vars SET sealed = ? WHERE app = ? AND key = ?",
                    (bytes(sealed), "shop", "DB_PASSWORD"))

    with pytest.raises(StateError, match=r"secret DB_PASSWORD of app shop failed its integrity "
                                          r"check: .*tampered with") as info:
        state.secrets("shop")
    assert info.value.exit_code == 10
    assert state.secret_keys("shop") == ["DB_PASSWORD"]  # listing keys decrypts nothing
    # as the message says: setting the secret again repairs it
    assert state.set_secrets("shop", {"DB_PASSWORD": "hunter2"}) == 2
    assert state.secrets("shop") == {"DB_PASSWORD": "hunter2"}


def test_truncated_ciphertext_fails_with_a_clear_error(backend, state):
    state.create_app("shop")
    state.set_secrets("shop", {"DB_PASSWORD": "hunter2"})
    backend.execute("UPDATE secret_vars SET sealed = ? WHERE key = ?", (b"\x01abc", "DB_PASSWORD"))
    with pytest.raises(StateError, match="not a sealed value noops wrote"):
        state.secrets("shop")


def test_ciphertext_moved_to_another_key_or_app_does_not_decrypt(backend, state):
    state.create_app("shop")
    state.create_app("blog")
    state.set_secrets("shop", {"ADMIN_TOKEN": "admin", "PUBLIC_TOKEN": "public"})
    state.set_secrets("blog", {"ADMIN_TOKEN": "blog-admin"})
    admin = _sealed_row(backend, "shop", "ADMIN_TOKEN")

    backend.execute("UPDATE secret_vars SET sealed = ? WHERE app = ? AND key = ?",
                    (admin, "shop", "PUBLIC_TOKEN"))
    with pytest.raises(StateError, match="secret PUBLIC_TOKEN of app shop failed its integrity"):
        state.secrets("shop")

    backend.execute("UPDATE secret_vars SET sealed = ? WHERE app = ? AND key = ?",
                    (admin, "blog", "ADMIN_TOKEN"))
    with pytest.raises(StateError, match="secret ADMIN_TOKEN of app blog failed its integrity"):
        state.secrets("blog")


def test_a_wrong_key_file_is_named_in_the_error(backend, state, tmp_path):
    state.create_app("shop")
    state.set_secrets("shop", {"DB_PASSWORD": "hunter2"})
    other = backend.open(box=SecretBox(tmp_path / "other" / "secret.key"))

    assert other.secret_keys("shop") == ["DB_PASSWORD"]
    with pytest.raises(StateError, match=r"sealed with another key \(id [0-9a-f]{16}\) than "
                                         r".*other/secret.key \(id [0-9a-f]{16}\)"):
        other.secrets("shop")
    # the right key still works, and a second replica with a copy of the key file too
    copy = tmp_path / "copy" / "secret.key"
    copy.parent.mkdir()
    copy.write_bytes((backend.home / "state" / "secret.key").read_bytes())
    copy.chmod(0o600)
    assert backend.open(box=SecretBox(copy)).secrets("shop") == {"DB_PASSWORD": "hunter2"}


def test_key_file_is_created_0600_with_32_random_bytes(backend):
    key = backend.home / "state" / "secret.key"
    assert not key.exists()
    backend.open()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.parent.stat().st_mode) & 0o077 == 0
    before = key.read_bytes()
    backend.open()
    assert key.read_bytes() == before  # an existing key is kept, never replaced


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(backend, mode):
    key = backend.home / "state" / "secret.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(os.urandom(32))
    key.chmod(mode)
    with pytest.raises(StateError, match=rf"has mode {mode:04o}; .*Run `chmod 600 {key}`") as info:
        backend.open()
    assert info.value.exit_code == 10


def test_damaged_key_file_is_refused(backend):
    key = backend.home / "state" / "secret.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"too short")
    key.chmod(0o600)
    with pytest.raises(StateError, match="holds 9 bytes, not 32: it is damaged"):
        backend.open()


def test_concurrent_first_starts_agree_on_one_key(tmp_path):
    import threading

    path = tmp_path / "state" / "secret.key"
    start = threading.Barrier(8)
    boxes: list[SecretBox] = []

    def make() -> None:
        start.wait()
        boxes.append(SecretBox(path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sealed = boxes[0].seal("shop", "A", "v")
    assert all(box.open("shop", "A", sealed) == "v" for box in boxes)
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temp files left
