"""`noops build` end to end: real stacks, real runc, the example apps answering HTTP."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import EXAMPLES, needs, wait_http
from noops.build.inspect import image_sbom, inspect_image
from noops.build.lifecycle import build_image
from noops.errors import BuildError, DetectError, ImageError, ToolMissingError
from noops.oci.store import ImageStore
from noops.settings import Settings

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap")]

MARKERS = {"flask": "noops example: flask", "fastapi": "noops example: fastapi",
           "express": "noops example: express", "go": "noops example: go",
           "static": "noops example: static"}
DEPENDENCIES = {"flask": ["flask", "gunicorn"], "fastapi": ["fastapi", "uvicorn"],
                "express": ["express"], "go": [], "static": []}


@pytest.mark.parametrize("example", list(MARKERS))
def test_example_builds_serves_and_has_an_sbom(example: str, noops_settings: Settings,
                                               store: ImageStore, unique: str,
                                               run_image: object) -> None:
    report = build_image(noops_settings, EXAMPLES / example, tag=f"t-{unique}/{example}")
    info = inspect_image(store, report.name)
    assert info["user"] == "1000:1000"
    assert info["entrypoint"] == ["/cnb/process/web"]
    assert info["runImage"]["topLayer"] in [layer["diff_id"] for layer in info["layers"]]
    labels = info["labels"]
    assert labels["io.buildpacks.rebasable"] == "true"
    assert labels["io.buildpacks.base.distro.name"] == "debian"
    lifecycle = json.loads(labels["io.buildpacks.lifecycle.metadata"])
    for key in ("app", "sbom", "config", "launcher", "process-types", "runImage", "stack"):
        assert key in lifecycle

    running = run_image(report.name)  # type: ignore[operator]
    status, body = wait_http(running.url + "/")
    assert status == 200 and MARKERS[example] in body

    doc = image_sbom(noops_settings, store, report.name)
    names = {c["name"].lower(): c for c in doc["components"]}
    assert any(c["purl"].startswith("pkg:deb/debian/") for c in doc["components"])
    assert "base-files" in names
    for dep in DEPENDENCIES[example]:
        assert dep in names and names[dep].get("version"), dep


def test_ctrl_c_stops_noops_run_cleanly(noops_settings: Settings, unique: str,
                                        run_image: object) -> None:
    report = build_image(noops_settings, EXAMPLES / "go", tag=f"t-{unique}/go")
    running = run_image(report.name)  # type: ignore[operator]
    wait_http(running.url + "/healthz")
    running.proc.send_signal(signal.SIGINT)
    assert running.proc.wait(timeout=20) == 0
    assert running.proc.stdout is not None
    output = running.proc.stdout.read().decode()
    assert "shutdown complete" in output, output  # the app got the signal and drained
    runc_list = subprocess.run(["runc", "--root", "/run/noops/runc", "list", "-q"],
                               capture_output=True, text=True, check=False).stdout
    assert "noops-run" not in runc_list


def test_same_source_same_digest_from_other_dirs_and_times(noops_settings: Settings,
                                                           tmp_path: Path, unique: str) -> None:
    first_dir, second_dir = tmp_path / "a" / "flask", tmp_path / "b" / "elsewhere"
    shutil.copytree(EXAMPLES / "flask", first_dir)
    first = build_image(noops_settings, first_dir, tag=f"t-{unique}/repro")
    time.sleep(1.1)
    shutil.copytree(EXAMPLES / "flask", second_dir)
    for path in second_dir.rglob("*"):
        path.touch()
    second = build_image(noops_settings, second_dir, tag=f"t-{unique}/repro")
    assert first.digest == second.digest


def test_source_edit_reuses_dependency_layers(noops_settings: Settings, tmp_path: Path,
                                              unique: str, run_image: object) -> None:
    app = tmp_path / "flask"
    shutil.copytree(EXAMPLES / "flask", app)
    first = build_image(noops_settings, app, tag=f"t-{unique}/edit")
    source = (app / "app.py").read_text()
    assert 'VERSION = "1.0.0"' in source
    (app / "app.py").write_text(source.replace('VERSION = "1.0.0"', 'VERSION = "2.0.0"'))
    second = build_image(noops_settings, app, tag=f"t-{unique}/edit")

    layers1 = {layer["name"]: layer for layer in first.layers}
    layers2 = {layer["name"]: layer for layer in second.layers}
    venv = "noops/python:venv"
    assert layers1[venv]["diff_id"] == layers2[venv]["diff_id"]
    assert not layers2[venv]["rebuilt"] and not layers2[venv]["new_blob"]
    assert not any("pip" in cmd for cmd in second.commands), second.commands
    assert layers1["app"]["diff_id"] != layers2["app"]["diff_id"]
    for name in ("run image", "launcher", "config", "process-types"):
        assert layers1[name]["diff_id"] == layers2[name]["diff_id"], name
    running = run_image(second.name)  # type: ignore[operator]
    assert wait_http(running.url + "/version")[1].strip() == "2.0.0"


def test_failed_install_shows_pips_message_and_tags_nothing(noops_settings: Settings,
                                                            store: ImageStore, tmp_path: Path,
                                                            unique: str) -> None:
    app = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "flask", app)
    (app / "requirements.txt").write_text("noops-no-such-package-xyz==9.9.9\n")
    with pytest.raises(BuildError) as err:
        build_image(noops_settings, app, tag=f"t-{unique}/broken")
    assert "noops-no-such-package-xyz" in str(err.value)
    assert "pip install" in str(err.value)
    with pytest.raises(ImageError):
        store.resolve(f"t-{unique}/broken")


def test_failed_npm_install_shows_npms_message(noops_settings: Settings, tmp_path: Path,
                                               unique: str) -> None:
    app = tmp_path / "broken-node"
    shutil.copytree(EXAMPLES / "express", app)
    lock = json.loads((app / "package-lock.json").read_text())
    lock["packages"][""]["dependencies"]["noops-no-such-pkg-xyz"] = "9.9.9"
    package = json.loads((app / "package.json").read_text())
    package["dependencies"]["noops-no-such-pkg-xyz"] = "9.9.9"
    (app / "package.json").write_text(json.dumps(package))
    (app / "package-lock.json").write_text(json.dumps(lock))
    with pytest.raises(BuildError, match="npm"):
        build_image(noops_settings, app, tag=f"t-{unique}/broken-node")


def test_empty_folder_and_missing_runc(noops_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(DetectError, match=r"requirements\.txt"):
        build_image(noops_settings, tmp_path)
    no_runc = Settings(environ={"NOOPS_RUNC": "/nonexistent/runc"},
                       overrides={"home": noops_settings.home})
    with pytest.raises(ToolMissingError, match="apt-get install -y runc"):
        build_image(no_runc, EXAMPLES / "static", tag="t-norunc/static")


def test_cli_reports_errors_without_traceback(tmp_path: Path, noops_home: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "noops", "--home", str(noops_home), "build",
                             str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 7
    assert result.stderr.startswith("Error: no buildpack recognises")
    assert "Traceback" not in result.stderr


def test_cli_build_json(noops_home: Path, unique: str) -> None:
    result = subprocess.run([sys.executable, "-m", "noops", "--home", str(noops_home), "build",
                             str(EXAMPLES / "static"), "-t", f"t-{unique}/static", "--json"],
                            capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    assert data["name"] == f"t-{unique}/static:latest"
    assert data["buildpack"] == "noops/static"
    assert data["processes"][0]["type"] == "web"


def test_zstd_layers_on_request(noops_home: Path, unique: str, run_image: object) -> None:
    result = subprocess.run([sys.executable, "-m", "noops", "--home", str(noops_home), "build",
                             str(EXAMPLES / "go"), "-t", f"t-{unique}/go-zstd", "--json",
                             "--compression", "zstd"], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    store = ImageStore(noops_home / "images")
    image = store.image(data["name"])
    written = {layer["digest"] for layer in data["layers"] if layer["new_blob"]}
    assert written, "the app layer at least is compressed anew"
    for desc in image.layers:
        if desc.digest in written:
            assert desc.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    running = run_image(data["name"])  # type: ignore[operator]
    assert "noops example: go" in wait_http(running.url + "/")[1]
