"""Zero-code OpenTelemetry: real builds of the examples, run under runc, exporting to a real
OTLP receiver (``noops.observe.otlp.Receiver`` over an in-memory store) on 127.0.0.1.

``noops run`` shares the host network, so the app reaches the receiver's loopback port directly.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import EXAMPLES, needs, wait_http
from integration.observe_otlp.conftest import MemoryStore, RunningReceiver, otlp_server
from noops.build.lifecycle import BuildReport, build_image
from noops.oci.store import ImageStore
from noops.oci.unpack import LayerCache
from noops.settings import Settings

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap")]
# The OTLP receiver's own test harness (an in-memory store behind a real receiver on 127.0.0.1),
# re-exported so pytest finds the fixture here.
__all__ = ["otlp_server"]

OTEL = "noops/python:otel"
VENV = "noops/python:venv"


def _env(receiver: RunningReceiver | None, service: str, **extra: str) -> list[str]:
    env = {"OTEL_SERVICE_NAME": service,
           "OTEL_RESOURCE_ATTRIBUTES": "service.version=t1,deployment.environment.name=test",
           # short export intervals so the test does not wait for the 5 s defaults
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BLRP_SCHEDULE_DELAY": "100",
           "OTEL_METRIC_EXPORT_INTERVAL": "500", **extra}
    if receiver is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    args = []
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return args


def _layer_dirs(settings: Settings, store: ImageStore, report: BuildReport) -> dict[str, Path]:
    image = store.image(report.name)
    cache = LayerCache(settings.home / "layers", store)
    cache.ensure(image)
    return {layer["name"]: cache.path(layer["diff_id"]) for layer in report.layers}


def _server_span(store: MemoryStore, service: str, route: str) -> dict[str, Any] | None:
    for span in list(store.spans):
        if (span["ServiceName"] == service and span["SpanKind"] == "Server"
                and span["SpanAttributes"].get("http.route") == route):
            return span
    return None


def _stop(running: Any) -> str:
    running.proc.send_signal(signal.SIGINT)
    running.proc.wait(timeout=30)
    return str(running.proc.stdout.read().decode(errors="replace"))


@pytest.mark.parametrize("example", ["flask", "fastapi"])
def test_python_example_sends_traces_and_correlated_logs(
        example: str, noops_settings: Settings, store: ImageStore, unique: str,
        otlp_server: Any, run_image: Any) -> None:
    report = build_image(noops_settings, EXAMPLES / example, tag=f"t-{unique}/{example}")
    layers = {layer["name"]: layer for layer in report.layers}
    assert list(layers).index(OTEL) == list(layers).index(VENV) + 1

    dirs = _layer_dirs(noops_settings, store, report)
    otel_site = dirs[OTEL] / "layers/noops_python/otel/site"
    venv_site = next(dirs[VENV].glob("layers/noops_python/venv/lib/python3*/site-packages"))
    assert (otel_site / "opentelemetry/instrumentation" / example).is_dir()
    for part in ("sdk", "instrumentation", "distro"):  # the dependency layer is untouched
        assert not (venv_site / "opentelemetry" / part).exists()
    # the app's own packages are never shadowed, except the OpenTelemetry API (FastAPI depends
    # on it), which must be the SDK's own release
    shared = {p.name.split("-")[0].lower() for p in venv_site.glob("*.dist-info")}
    doubled = shared & {p.name.split("-")[0].lower() for p in otel_site.glob("*.dist-info")}
    assert doubled <= {"opentelemetry_api"}, f"the otel layer shadows the app's own {doubled}"

    receiver = otlp_server()
    service = f"shop-{example}-{unique}"
    running = run_image(report.name, *_env(receiver, service))
    status, body = wait_http(running.url + "/")
    assert status == 200 and f"noops example: {example}" in body

    receiver.store.wait(lambda: _server_span(receiver.store, service, "/") is not None, 30)
    span = _server_span(receiver.store, service, "/")
    assert span is not None
    attrs = span["SpanAttributes"]
    assert "200" in (attrs.get("http.status_code"), attrs.get("http.response.status_code")), attrs
    assert span["ResourceAttributes"]["service.version"] == "t1"
    assert span["ResourceAttributes"]["telemetry.auto.version"]

    def correlated() -> bool:
        return any(log["TraceId"] == span["TraceId"] and "GET / 200" in str(log["Body"])
                   for log in list(receiver.store.logs))

    receiver.store.wait(correlated, 30)
    receiver.store.wait(lambda: bool(receiver.store.metrics), 30)
    output = _stop(running)
    assert "Traceback" not in output, output


def test_disabled_or_unconfigured_is_inert(noops_settings: Settings, unique: str,
                                           otlp_server: Any, run_image: Any) -> None:
    report = build_image(noops_settings, EXAMPLES / "flask", tag=f"t-{unique}/flask")
    assert OTEL in [layer["name"] for layer in report.layers]
    receiver = otlp_server()
    # opted out: the runtime sets OTEL_SDK_DISABLED=true next to the usual OTEL_* settings
    disabled = run_image(report.name, *_env(receiver, "off", OTEL_SDK_DISABLED="true"))
    # run by hand, no OTEL_* at all: the SDK's default endpoint must not even be tried
    bare = run_image(report.name)
    for running in (disabled, bare):
        assert wait_http(running.url + "/")[0] == 200
        assert httpx.get(running.url + "/healthz").status_code == 200
    outputs = [_stop(disabled), _stop(bare)]  # a booted SDK would flush at exit
    assert receiver.store.spans == [] and receiver.store.logs == [] and not receiver.store.metrics
    for output in outputs:
        assert "GET / 200" in output  # the app's own stdout log is unchanged
        for noise in ("Traceback", "opentelemetry", "OpenTelemetry", "Failed to export"):
            assert noise not in output, output


def test_rebuild_reuses_the_otel_layer(noops_settings: Settings, tmp_path: Path,
                                       unique: str) -> None:
    app = tmp_path / "flask"
    shutil.copytree(EXAMPLES / "flask", app)
    first = build_image(noops_settings, app, tag=f"t-{unique}/again")
    source = (app / "app.py").read_text()
    (app / "app.py").write_text(source.replace('VERSION = "1.0.0"', 'VERSION = "2.0.0"'))
    second = build_image(noops_settings, app, tag=f"t-{unique}/again")
    before = {layer["name"]: layer for layer in first.layers}
    after = {layer["name"]: layer for layer in second.layers}
    assert before[OTEL]["diff_id"] == after[OTEL]["diff_id"]
    assert not after[OTEL]["rebuilt"] and not after[OTEL]["new_blob"]
    assert not any("pip" in cmd or "opentelemetry" in cmd for cmd in second.commands)
    assert before["app"]["diff_id"] != after["app"]["diff_id"]


def test_app_pins_win_over_opentelemetry(noops_settings: Settings, store: ImageStore,
                                         tmp_path: Path, unique: str, otlp_server: Any,
                                         run_image: Any) -> None:
    # wrapt is shared with OpenTelemetry: the app's older pin is used by both.
    app = tmp_path / "flask"
    shutil.copytree(EXAMPLES / "flask", app)
    with (app / "requirements.txt").open("a") as reqs:
        reqs.write("wrapt==1.17.2\n")
    report = build_image(noops_settings, app, tag=f"t-{unique}/pinned")
    dirs = _layer_dirs(noops_settings, store, report)
    assert not list((dirs[OTEL] / "layers/noops_python/otel/site").glob("wrapt*"))
    receiver = otlp_server()
    running = run_image(report.name, *_env(receiver, f"pinned-{unique}"))
    assert wait_http(running.url + "/")[0] == 200
    receiver.store.wait(lambda: _server_span(receiver.store, f"pinned-{unique}", "/") is not None,
                        30)

    # protobuf 3 cannot carry OTLP 1.45: the app builds and runs without the layer.
    (app / "requirements.txt").write_text("flask==3.1.3\ngunicorn==27.0.1\nprotobuf==3.20.3\n")
    lines: list[str] = []
    report = build_image(noops_settings, app, tag=f"t-{unique}/conflict", log=lines.append)
    assert OTEL not in [layer["name"] for layer in report.layers]
    assert any("auto-instrumentation left out" in line for line in lines)
    running = run_image(report.name, *_env(receiver, f"conflict-{unique}"))
    assert wait_http(running.url + "/")[0] == 200
    again = build_image(noops_settings, app, tag=f"t-{unique}/conflict", log=lines.append)
    assert again.digest == report.digest
    assert not any("pip" in cmd for cmd in again.commands)  # the conflict is remembered
    remembered = [line for line in lines if "as in the last build" in line]
    assert remembered and "protobuf==3.20.3" in remembered[-1], remembered


def test_express_example_sends_traces_and_opting_out_is_inert(
        noops_settings: Settings, store: ImageStore, unique: str, otlp_server: Any,
        run_image: Any) -> None:
    report = build_image(noops_settings, EXAMPLES / "express", tag=f"t-{unique}/express")
    names = [layer["name"] for layer in report.layers]
    assert names.index("noops/node:otel") == names.index("noops/node:modules") + 1
    dirs = _layer_dirs(noops_settings, store, report)
    assert not (dirs["noops/node:modules"] / "layers/noops_node/modules/node_modules/@opentelemetry"
                ).exists()
    receiver = otlp_server()
    service = f"shop-express-{unique}"
    running = run_image(report.name, *_env(receiver, service))
    status, body = wait_http(running.url + "/")
    assert status == 200 and "noops example: express" in body
    receiver.store.wait(lambda: _server_span(receiver.store, service, "/") is not None, 30)
    span = _server_span(receiver.store, service, "/")
    assert span is not None
    attrs = span["SpanAttributes"]
    assert "200" in (attrs.get("http.status_code"), attrs.get("http.response.status_code")), attrs
    assert span["ResourceAttributes"]["service.version"] == "t1"
    receiver.store.wait(lambda: bool(receiver.store.metrics), 30)
    output = _stop(running)
    assert "GET / 200" in output

    quiet = otlp_server()
    disabled = run_image(report.name, *_env(quiet, "off", OTEL_SDK_DISABLED="true"))
    bare = run_image(report.name)
    for app in (disabled, bare):
        assert wait_http(app.url + "/")[0] == 200
    outputs = [_stop(disabled), _stop(bare)]
    assert quiet.store.spans == [] and quiet.store.logs == [] and not quiet.store.metrics
    for output in outputs:
        assert "GET / 200" in output
        assert "OpenTelemetry" not in output and "Error" not in output, output


def test_two_service_shop_is_one_trace(noops_settings: Settings, unique: str, otlp_server: Any,
                                       run_image: Any) -> None:
    inventory = build_image(noops_settings, EXAMPLES / "shop-inventory",
                            tag=f"t-{unique}/shop-inventory")
    frontend = build_image(noops_settings, EXAMPLES / "shop-frontend",
                           tag=f"t-{unique}/shop-frontend")
    receiver = otlp_server()
    back = run_image(inventory.name, *_env(receiver, "shop-inventory"))
    wait_http(back.url + "/healthz")
    front = run_image(frontend.name,
                      *_env(receiver, "shop-frontend", INVENTORY_URL=back.url))
    status, body = wait_http(front.url + "/")
    assert status == 200 and "Enamel mug (mug): 12 in stock" in body, body

    store = receiver.store
    store.wait(lambda: _server_span(store, "shop-inventory", "/items") is not None
               and _server_span(store, "shop-frontend", "/") is not None, 30)
    served = _server_span(store, "shop-inventory", "/items")
    page = _server_span(store, "shop-frontend", "/")
    assert served is not None and page is not None
    assert served["TraceId"] == page["TraceId"]  # one trace across both services
    calls = [s for s in store.spans if s["ServiceName"] == "shop-frontend"
             and s["SpanKind"] == "Client" and s["SpanId"] == served["ParentSpanId"]]
    assert calls and calls[0]["TraceId"] == page["TraceId"]
    store.wait(lambda: any(log["TraceId"] == page["TraceId"] and "listed 3 items" in str(log["Body"])
                           for log in list(store.logs)), 30)
