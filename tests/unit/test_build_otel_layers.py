"""The otel layers' moving parts that need no build: the start-up gates (the real
``sitecustomize.py`` and ``register.js`` shipped in the layers, in real interpreters, against a
stand-in SDK that records that it was started), and the Python layer's file surgery."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from noops.build.buildpacks import otel_python
from noops.build.buildpacks.otel_python import _newer_api, _remove_dist, _write_dists

DATA = Path(otel_python.__file__).parent / "otel_data"
CONFIGURED = {"OTEL_SERVICE_NAME": "shop", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
CASES = [
    ({}, False),
    (CONFIGURED, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({**CONFIGURED, "OTEL_SDK_DISABLED": "true"}, False),
    ({**CONFIGURED, "OTEL_SDK_DISABLED": " TRUE "}, False),
    ({**CONFIGURED, "OTEL_SDK_DISABLED": "false"}, True),
    ({"OTEL_SERVICE_NAME": "  "}, False),
]


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON", "NODE_"))}
    return {**env, **extra}


@pytest.mark.parametrize(("env", "boots"), CASES)
def test_python_gate_starts_the_sdk_only_when_configured(tmp_path: Path, env: dict[str, str],
                                                         boots: bool) -> None:
    fake = tmp_path / "site/opentelemetry/instrumentation/auto_instrumentation"
    fake.mkdir(parents=True)
    marker = tmp_path / "booted"
    (fake / "__init__.py").write_text(
        f"def initialize():\n    open({str(marker)!r}, 'w').close()\n")
    boot = tmp_path / "boot"
    shutil.copytree(DATA / "python", boot)
    pythonpath = f"{boot}:{tmp_path / 'site'}"
    done = subprocess.run([sys.executable, "-c", "print('app ran')"], capture_output=True,
                          text=True, env=_clean_env({**env, "PYTHONPATH": pythonpath}),
                          check=True)
    assert done.stdout == "app ran\n" and done.stderr == ""
    assert marker.exists() == boots


def test_python_gate_never_stops_the_app(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    shutil.copytree(DATA / "python", boot)  # no SDK next to it: a broken layer
    done = subprocess.run([sys.executable, "-c", "print('app ran')"], capture_output=True,
                          text=True, env=_clean_env({**CONFIGURED, "PYTHONPATH": str(boot)}),
                          check=True)
    assert done.stdout == "app ran\n"
    assert "auto-instrumentation not started" in done.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
@pytest.mark.parametrize(("env", "boots"), CASES)
def test_node_gate_loads_register_only_when_configured(tmp_path: Path, env: dict[str, str],
                                                       boots: bool) -> None:
    boot = tmp_path / "otel/boot"
    boot.mkdir(parents=True)
    shutil.copy(DATA / "node/register.js", boot / "register.js")
    upstream = tmp_path / "otel/node_modules/@opentelemetry/auto-instrumentations-node/build/src"
    upstream.mkdir(parents=True)
    marker = tmp_path / "booted"
    (upstream / "register.js").write_text(
        f"require('fs').writeFileSync({str(marker)!r}, 'yes');\n")
    done = subprocess.run(["node", "--require", str(boot / "register.js"), "-e",
                           "console.log('app ran')"], capture_output=True, text=True,
                          env=_clean_env(env), check=True)
    assert done.stdout == "app ran\n" and done.stderr == ""
    assert marker.exists() == boots


def test_remove_dist_deletes_only_that_distribution(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name, files in (("wrapt", ["wrapt/__init__.py", "wrapt/wrappers.py"]),
                        ("googleapis_common_protos", ["google/api/http_pb2.py"]),
                        ("protobuf", ["google/protobuf/__init__.py"])):
        info = site / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        for rel in files:
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            (site / rel).write_text("x = 1\n")
        records = [*files, f"{info.name}/METADATA", "../bin/outside,,"]
        (info / "RECORD").write_text("\n".join(f"{r.split(',')[0]},sha256=x,1" for r in records))
        (info / "METADATA").write_text(f"Name: {name}\nVersion: 1.0\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/outside").write_text("keep")
    (site / "wrapt/__pycache__").mkdir()
    (site / "wrapt/__pycache__/wrappers.cpython-311.pyc").write_bytes(b"")

    _remove_dist(site, site / "wrapt-1.0.dist-info")
    _remove_dist(site, site / "protobuf-1.0.dist-info")
    assert not (site / "wrapt").exists() and not (site / "wrapt-1.0.dist-info").exists()
    assert not (site / "google/protobuf").exists()
    assert (site / "google/api/http_pb2.py").is_file()  # the shared namespace stays
    assert (tmp_path / "bin/outside").read_text() == "keep"  # RECORD never reaches outside


def test_metadata_only_dists_are_what_importlib_sees(tmp_path: Path) -> None:
    _write_dists(tmp_path, {"flask": "3.1.3", "typing-extensions": "4.16.0"})
    code = ("import importlib.metadata as m; "
            "print(m.version('Flask'), m.version('typing_extensions'))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          env=_clean_env({"PYTHONPATH": str(tmp_path)}), check=True)
    assert done.stdout.split() == ["3.1.3", "4.16.0"]


def test_only_a_newer_minor_api_keeps_the_layer_out() -> None:
    major, minor, _ = otel_python.OTEL_SDK_VERSION.split(".")
    assert _newer_api({}) is None
    assert _newer_api({"opentelemetry-api": f"{major}.{minor}.99"}) is None
    assert _newer_api({"opentelemetry-api": "1.0.0"}) is None
    newer = f"{major}.{int(minor) + 1}.0"
    assert _newer_api({"opentelemetry-api": newer}) == newer
