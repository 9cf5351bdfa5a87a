"""Every setting resolves flag > environment > settings file > default, and says where from."""

from __future__ import annotations

from pathlib import Path

import pytest

from noops.errors import UsageError
from noops.settings import Settings, default_home


def test_precedence_and_source(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[noops]\ncompression = "zstd"\ndebian_suite = "trixie"\n')
    env = {"NOOPS_HOME": str(tmp_path), "NOOPS_DEBIAN_SUITE": "bookworm"}
    settings = Settings(environ=env, overrides={"runc": "/opt/runc"})
    assert (settings.get("runc"), settings.source("runc")) == ("/opt/runc", "override")
    assert (settings.get("debian_suite"), settings.source("debian_suite")) == ("bookworm", "env")
    assert (settings.get("compression"), settings.source("compression")) == ("zstd", "file")
    assert (settings.get("frontdoor_port"), settings.source("frontdoor_port")) == (8443, "default")
    assert settings.home == tmp_path


def test_bad_values_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="NOOPS_FRONTDOOR_PORT"):
        Settings(environ={"NOOPS_HOME": str(tmp_path), "NOOPS_FRONTDOOR_PORT": "https"}).get(
            "frontdoor_port")
    with pytest.raises(UsageError, match="unknown setting"):
        Settings(environ={}, overrides={"colour": "blue"})
    (tmp_path / "config.toml").write_text("[noops\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        Settings(environ={"NOOPS_HOME": str(tmp_path)}).get("compression")


def test_default_home() -> None:
    assert default_home(0) == Path("/var/lib/noops")
    assert default_home(1000).parts[-3:] == (".local", "share", "noops")
