"""A noops-built app image pushed to a real registry is a valid OCI image to other tools."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import EXAMPLES, needs
from noops.build.lifecycle import build_image
from noops.errors import RegistryError
from noops.oci.registry import push
from noops.oci.store import ImageStore
from noops.settings import Settings

pytestmark = [pytest.mark.registry, pytest.mark.stacks,
              needs("runc", "mmdebstrap", "skopeo", "umoci", "docker-registry")]


def test_built_image_pushes_and_other_tools_read_it(noops_settings: Settings, registry: object,
                                                    tmp_path: Path, unique: str) -> None:
    report = build_image(noops_settings, EXAMPLES / "flask", tag=f"t-{unique}/flask")
    app_store = ImageStore(noops_settings.home / "images")
    remote = f"{registry.host}/apps/flask:{unique}"  # type: ignore[attr-defined]
    result = push(app_store, report.name, remote, insecure=True)
    assert result.digest == report.digest

    inspected = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{remote}"],
        capture_output=True, text=True, check=True).stdout)
    assert inspected["Digest"] == report.digest
    lifecycle = json.loads(inspected["Labels"]["io.buildpacks.lifecycle.metadata"])
    assert lifecycle["runImage"]["image"] == "noops/run-python:stable"
    assert inspected["Labels"]["io.buildpacks.rebasable"] == "true"

    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{remote}",
                    f"oci:{layout}:flask"], capture_output=True, check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:flask", str(bundle)],
                   capture_output=True, check=True)
    rootfs = bundle / "rootfs"
    assert "Flask(__name__)" in (rootfs / "workspace" / "app.py").read_text()
    assert (rootfs / "cnb" / "lifecycle" / "launcher").is_file()
    assert (rootfs / "cnb" / "process" / "web").is_symlink()
    assert (rootfs / "layers" / "sbom" / "launch" / "noops" / "sbom.cdx.json").is_file()

    again = push(app_store, report.name, remote, insecure=True)
    assert again.uploaded == [] and again.mounted == []


def test_push_refused_by_registry_is_a_clear_error(noops_settings: Settings,
                                                   basic_registry: object, unique: str) -> None:
    report = build_image(noops_settings, EXAMPLES / "static", tag=f"t-{unique}/static")
    app_store = ImageStore(noops_settings.home / "images")
    remote = f"{basic_registry.host}/apps/static:{unique}"  # type: ignore[attr-defined]
    with pytest.raises(RegistryError, match="401"):
        push(app_store, report.name, remote, insecure=True, environ={})


def test_rebase_of_a_registry_image(noops_settings: Settings, registry: object,
                                    unique: str) -> None:
    from noops.build.rebase import rebase_image
    from noops.build.stacks import build_stack
    from noops.oci.registry import remote_image

    report = build_image(noops_settings, EXAMPLES / "go", tag=f"t-{unique}/go")
    app_store = ImageStore(noops_settings.home / "images")
    remote = f"{registry.host}/apps/go:{unique}"  # type: ignore[attr-defined]
    push(app_store, report.name, remote, insecure=True)
    before = remote_image(remote, insecure=True)
    top = json.loads(before.labels["io.buildpacks.lifecycle.metadata"])["runImage"]["topLayer"]
    app_layers = before.layers[before.diff_ids.index(top) + 1:]

    patched = Settings(environ={"SOURCE_DATE_EPOCH": str(1_600_000_000 + int(unique, 16) % 10**6)},
                       overrides={"home": noops_settings.home})
    new_run = build_stack(patched, app_store, "static", kinds=("run",))
    result = rebase_image(noops_settings, app_store, remote, insecure=True)
    assert result.pushed is not None and result.run_digest == new_run.run_digest

    after = remote_image(remote, insecure=True)
    assert after.digest == result.digest != before.digest
    md = json.loads(after.labels["io.buildpacks.lifecycle.metadata"])
    new_base = app_store.image("noops/run-static:stable")
    assert md["runImage"]["topLayer"] == new_base.diff_ids[-1]
    assert after.layers[len(new_base.layers):] == app_layers
