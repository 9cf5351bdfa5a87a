"""Telemetry storage in the OTel Collector ClickHouse exporter schema.

``TelemetryStore`` (:mod:`.base`) is the contract; :class:`DuckDBStore` is the default (one file
under NOOPS_HOME), :class:`ClickHouseStore` the scale-out backend (embedded chdb or a server).
"""

from __future__ import annotations

from noops.observe.store.base import (
    EXACT_PERCENTILES_MAX,
    Correlation,
    Edge,
    EndpointStats,
    ErrorGroup,
    GaugePoint,
    HistogramBin,
    Row,
    ServiceStats,
    SlowTrace,
    StoreError,
    StoreUsageError,
    TelemetryStore,
    TimeseriesPoint,
)
from noops.observe.store.duckdb import DuckDBStore

__all__ = [
    "EXACT_PERCENTILES_MAX",
    "ClickHouseStore",
    "Correlation",
    "DuckDBStore",
    "Edge",
    "EndpointStats",
    "ErrorGroup",
    "GaugePoint",
    "HistogramBin",
    "Row",
    "ServiceStats",
    "SlowTrace",
    "StoreError",
    "StoreUsageError",
    "TelemetryStore",
    "TimeseriesPoint",
]


def __getattr__(name: str) -> object:
    # ClickHouseStore is imported lazily so that importing the store does not load chdb.
    if name == "ClickHouseStore":
        from noops.observe.store.clickhouse import ClickHouseStore

        return ClickHouseStore
    raise AttributeError(name)
