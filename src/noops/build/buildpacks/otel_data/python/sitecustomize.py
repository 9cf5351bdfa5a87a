"""Start OpenTelemetry auto-instrumentation in a noops-built Python app, when it is wanted.

The Python buildpack's ``otel`` layer puts this directory first on ``PYTHONPATH``, so every
interpreter of the app imports this module at start-up (``site`` imports ``sitecustomize``).
It boots the OpenTelemetry SDK and the instrumentations installed in the layer (upstream's
``opentelemetry.instrumentation.auto_instrumentation.initialize``) only when

* ``OTEL_SDK_DISABLED`` is not ``true`` (an app that opted out in ``noops.toml``), and
* an OTLP destination or a service name is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``, a
  per-signal ``OTEL_EXPORTER_OTLP_*_ENDPOINT``, or ``OTEL_SERVICE_NAME``), as the noops runtime
  does for every instance.

Otherwise it imports nothing: an image run by hand without that environment behaves exactly as
it would without the layer (no exporter retrying against a collector that is not there, no
warnings on stderr). Any failure while booting is reported on stderr once and never stops the
app.
"""

import os
import sys

_ENDPOINTS = (
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
)


def _wanted() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in _ENDPOINTS)


def _boot() -> None:
    try:
        from opentelemetry.instrumentation.auto_instrumentation import (  # type: ignore[import-not-found]
            initialize,
        )
    except Exception as exc:  # a broken layer must not stop the app
        print(f"noops: OpenTelemetry auto-instrumentation not started: {exc}", file=sys.stderr)
        return
    initialize()  # logs and swallows its own errors


if _wanted():
    _boot()
