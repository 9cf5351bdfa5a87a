"""``gate/oidc.toml``: the client secret sealed at rest, clear errors, the front door's reload."""

from __future__ import annotations

import base64
import logging
import os
import tomllib
from pathlib import Path

import pytest

from noops.gate._errors import GateError
from noops.gate._oidc_config import OidcConfig, OidcWatcher, load_oidc, save_oidc

SECRET = "s3cret-client-value"


def _config(**changes: object) -> OidcConfig:
    fields = {"issuer": "https://idp.example", "client_id": "noops", "client_secret": SECRET,
              "name": "Corp SSO", "scopes": ("openid", "email")}
    fields.update(changes)
    return OidcConfig(**fields)  # type: ignore[arg-type]


def test_the_secret_is_sealed_on_disk_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "oidc.toml"
    save_oidc(path, _config())
    text = path.read_text()
    assert SECRET not in text and "client_secret =" not in text
    assert SECRET.encode() not in base64.b64decode(tomllib.loads(text)["client_secret_sealed"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    assert load_oidc(path) == _config()
    assert SECRET not in repr(load_oidc(path))


def test_a_tampered_or_foreign_secret_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "oidc.toml"
    save_oidc(path, _config())
    data = tomllib.loads(path.read_text())
    raw = bytearray(base64.b64decode(data["client_secret_sealed"]))
    raw[-1] ^= 1
    path.write_text(path.read_text().replace(data["client_secret_sealed"], base64.b64encode(raw).decode()))
    with pytest.raises(GateError, match=r"cannot be opened.*noops oidc set"):
        load_oidc(path)
    save_oidc(path, _config())
    os.remove(tmp_path / "secret.key")  # another key now: the sealed value cannot be opened
    with pytest.raises(GateError, match="noops oidc set"):
        load_oidc(path)


def test_a_hand_written_file_in_clear_still_works_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "oidc.toml"
    path.write_text(f'issuer = "https://idp.example"\nclient_id = "noops"\nclient_secret = "{SECRET}"\n')
    with caplog.at_level(logging.WARNING, logger="noops.gate"):
        config = load_oidc(path)
    assert config is not None and config.client_secret == SECRET and not config.sealed
    assert config.scopes == ("openid", "email", "profile")
    assert "in clear" in caplog.text and "noops oidc set" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize(("text", "match"), [
    ('client_id = "x"\nclient_secret = "y"\n', "issuer is required"),
    ('issuer = "https://i"\nclient_id = "x"\n', "no client secret"),
    ('issuer = "https://i"\nclient_id = "x"\nclient_secret = "y"\nscopes = "openid"\n', "scopes"),
    ("issuer = [", "noops oidc set"),
])
def test_invalid_files_say_what_to_fix(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "oidc.toml"
    path.write_text(text)
    with pytest.raises(GateError, match=match):
        load_oidc(path)


def test_the_watcher_follows_changes_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "oidc.toml"
    watcher = OidcWatcher(path)
    assert watcher.current() is None and watcher.changes == 0
    save_oidc(path, _config())
    assert watcher.current() == _config() and watcher.changes == 1
    assert watcher.current() == _config() and watcher.changes == 1  # unchanged: not read again
    path.write_text("issuer = [")  # broken while running: the last good one stays
    assert watcher.current() == _config()
    save_oidc(path, _config(name="Other"))
    assert watcher.current() == _config(name="Other") and watcher.changes == 2
    path.unlink()
    assert watcher.current() is None and watcher.changes == 3
    path.write_text("issuer = [")
    with pytest.raises(GateError):  # at start, an invalid file is an error
        OidcWatcher(path)
