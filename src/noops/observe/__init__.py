"""Observability: the OTLP receiver (``noops.observe.otlp``) and the telemetry store
(``noops.observe.store``: DuckDB by default, ClickHouse at scale)."""

__all__: list[str] = []
