"""Fixtures of the telemetry-store tests; the harness itself lives in ``store_harness`` (a module
name of its own: several test folders have a ``conftest``)."""

from store_harness import apm_api, dataset, fresh, loaded  # noqa: F401 - fixtures
