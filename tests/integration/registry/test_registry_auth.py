"""Registry auth: htpasswd basic auth and bearer tokens from a real token endpoint."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from noops.errors import RegistryError
from noops.oci.registry import find_credentials, pull, push, remote_image
from noops.oci.store import ImageStore

pytestmark = pytest.mark.registry

FILES = {"app/hello.txt": b"hello\n"}
LABELS = {"io.noops.test": "auth"}
NO_ENV: dict[str, str] = {}  # never fall back to the developer's own auth files


def _auth_file(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def test_basic_auth_push_and_pull_with_credentials(basic_registry, store, make_image, tmp_path):
    reg = basic_registry
    manifest = make_image(store, "app:1", FILES, LABELS)
    creds = (reg.user, reg.password)

    result = push(store, "app:1", f"{reg.host}/app:1", insecure=True, credentials=creds,
                  environ=NO_ENV)

    assert result.digest == manifest.digest and len(result.uploaded) == 3
    fresh = ImageStore(tmp_path / "fresh")
    assert pull(f"{reg.host}/app:1", fresh, insecure=True, credentials=creds,
                environ=NO_ENV).digest == manifest.digest
    mounted = push(store, "app:1", f"{reg.host}/other:1", insecure=True, credentials=creds,
                   environ=NO_ENV)
    assert len(mounted.mounted) == 3


def test_basic_auth_wrong_password_is_a_clear_401(basic_registry, store, make_image):
    make_image(store, "app:1", FILES, LABELS)
    wrong = "not-" + basic_registry.password

    with pytest.raises(RegistryError) as info:
        push(store, "app:1", f"{basic_registry.host}/app:1", insecure=True,
             credentials=(basic_registry.user, wrong), environ=NO_ENV)

    message = str(info.value)
    assert "401" in message and basic_registry.host in message
    assert "push of app:1" in message
    assert f"password of user '{basic_registry.user}'" in message
    assert wrong not in message and basic_registry.password not in message
    assert basic_registry.manifest_status("app", "1") == 401  # nothing readable anonymously


def test_basic_auth_without_credentials_says_how_to_log_in(basic_registry, store, make_image):
    make_image(store, "app:1", FILES, LABELS)

    with pytest.raises(RegistryError, match=r"401.*noops login " + basic_registry.host):
        push(store, "app:1", f"{basic_registry.host}/app:1", insecure=True, environ=NO_ENV)


def test_credentials_come_from_auth_files_named_by_the_environment(
    basic_registry, store, make_image, tmp_path
):
    reg = basic_registry
    make_image(store, "app:1", FILES, LABELS)
    auth = _auth_file(tmp_path / "auth.json", reg.host, reg.user, reg.password)

    result = push(store, "app:1", f"{reg.host}/app:1", insecure=True,
                  environ={"REGISTRY_AUTH_FILE": str(auth)})
    assert len(result.uploaded) == 3

    home = tmp_path / "home"
    _auth_file(home / ".docker" / "config.json", f"https://{reg.host}", reg.user, reg.password)
    image = remote_image(f"{reg.host}/app:1", insecure=True, environ={"HOME": str(home)})
    assert image.labels == LABELS


def test_find_credentials_order_and_errors(tmp_path):
    first = _auth_file(tmp_path / "first.json", "reg.example:5000", "u1", "p:1")
    runtime = tmp_path / "run"
    _auth_file(runtime / "containers" / "auth.json", "reg.example:5000", "u2", "p2")
    env = {"REGISTRY_AUTH_FILE": str(first), "XDG_RUNTIME_DIR": str(runtime)}

    assert find_credentials("reg.example:5000", env) == ("u1", "p:1")
    assert find_credentials("reg.example:5000", {"XDG_RUNTIME_DIR": str(runtime)}) == ("u2", "p2")
    assert find_credentials("other.example", env) is None
    hub = _auth_file(tmp_path / "hub.json", "https://index.docker.io/v1/", "h", "hp")
    assert find_credentials("docker.io", {"REGISTRY_AUTH_FILE": str(hub)}) == ("h", "hp")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"bad.json.*fix or remove"):
        find_credentials("reg.example:5000", {"REGISTRY_AUTH_FILE": str(tmp_path / "bad.json")})


def test_bearer_token_push_mount_and_pull(token_registry, token_server, store, make_image,
                                          tmp_path):
    reg = token_registry
    manifest = make_image(store, "app:1", FILES, LABELS)
    creds = (reg.user, reg.password)

    first = push(store, "app:1", f"{reg.host}/team/app:1", insecure=True, credentials=creds,
                 environ=NO_ENV)

    assert first.digest == manifest.digest and len(first.uploaded) == 3
    # One token for the whole push: it is cached per scope, not fetched per request.
    assert token_server.requests == [("bob", ["repository:team/app:pull,push"])]

    token_server.requests.clear()
    second = push(store, "app:1", f"{reg.host}/team/copy:1", insecure=True, credentials=creds,
                  environ=NO_ENV)
    assert len(second.mounted) == 3 and second.uploaded == []
    # The mount needed pull on the source repository too: one wider token, then cached.
    assert len(token_server.requests) == 2
    assert "repository:team/app:pull" in token_server.requests[-1][1]

    fresh = ImageStore(tmp_path / "fresh")
    assert pull(f"{reg.host}/team/copy:1", fresh, insecure=True, credentials=creds,
                environ=NO_ENV).digest == manifest.digest


def test_bearer_token_refused_for_wrong_password(token_registry, token_server, store,
                                                 make_image):
    make_image(store, "app:1", FILES, LABELS)
    wrong = "not-" + token_registry.password

    with pytest.raises(RegistryError) as info:
        push(store, "app:1", f"{token_registry.host}/app:1", insecure=True,
             credentials=(token_registry.user, wrong), environ=NO_ENV)

    message = str(info.value)
    assert "token service" in message and "401" in message
    assert "noops login" in message
    assert wrong not in message
    assert token_server.requests and token_server.requests[0][0] == ""  # refused at the realm


def test_cli_login_checks_and_saves_credentials(basic_registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    from noops.oci.registry import find_credentials

    auth = tmp_path / "auth.json"
    env = dict(os.environ, REGISTRY_AUTH_FILE=str(auth))
    base = [sys.executable, "-m", "noops", "login", basic_registry.host, "-u", basic_registry.user,
            "--password-stdin", "--insecure"]
    bad = subprocess.run(base, input="wrong\n", capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 5 and "401" in bad.stderr and "wrong" not in bad.stderr
    assert not auth.exists()
    good = subprocess.run(base, input=basic_registry.password + "\n", capture_output=True, text=True,
                          env=env, check=False)
    assert good.returncode == 0, good.stderr
    assert oct(auth.stat().st_mode & 0o777) == "0o600"
    assert find_credentials(basic_registry.host, {"REGISTRY_AUTH_FILE": str(auth)}) == (
        basic_registry.user, basic_registry.password)
