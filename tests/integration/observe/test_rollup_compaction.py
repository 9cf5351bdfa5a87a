"""The telemetry service's rollup compaction pass (``Telemetry.compact``) over a DuckDB store:
closed minutes are merged to one row per group, the newest minutes are left alone, and late
rows for a merged minute are merged by the next pass (its watermark looks back)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from noops.observe.service import COMPACT_LAG, COMPACT_LATE, Telemetry
from noops.observe.store import DuckDBStore, schema
from noops.settings import Settings

NS = 1_000_000_000


def _spans(minute: datetime, n: int, seed: int) -> list[dict[str, Any]]:
    t = int(minute.timestamp()) * NS
    return [{"Timestamp": t + (i * 7 + seed) % 60 * NS, "TraceId": f"{seed:08x}{i:024x}",
             "SpanId": f"{i:016x}", "ServiceName": "shop", "SpanName": "GET /",
             "SpanKind": "Server", "Duration": 5_000_000} for i in range(n)]


def _rows_per_minute(store: DuckDBStore) -> dict[datetime, tuple[int, int]]:
    """Minute -> (rollup rows, groups) of the minute rollup."""
    keys = ", ".join(n for n, _ in schema.ROLLUP if n not in schema.ROLLUP_AGG)
    rows = store._rows(f"SELECT Minute, count(*), count(DISTINCT ({keys})) "
                       "FROM otel_traces_rollup_1m GROUP BY Minute")
    return {m.replace(tzinfo=UTC): (int(n), int(g)) for m, n, g in rows}


def test_compaction_pass_watermark_and_late_rows(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "telemetry.duckdb")
    telemetry = Telemetry(Settings(environ={}, overrides={"home": tmp_path, "otlp_port": 0,
                                                             "otlp_grpc_port": 0}),
                          store=store)
    try:
        now = datetime.now(UTC).replace(second=30, microsecond=0)
        minutes = [now.replace(second=0) - timedelta(minutes=k) for k in (20, 10, 1, 0)]
        for seed in range(3):  # three inserts: three rows per group and minute
            store.insert_spans([s for m in minutes for s in _spans(m, 5, seed)])
        assert all(n == 3 * g for n, g in _rows_per_minute(store).values())

        assert asyncio.run(telemetry.compact(now)) > 0
        got = _rows_per_minute(store)
        for m in minutes:
            n, g = got[m]
            closed = m + timedelta(minutes=1) <= now - COMPACT_LAG
            assert (n == g) if closed else (n == 3 * g), m

        # late spans for a merged minute count at once and are merged by the next pass, which
        # looks back COMPACT_LATE before its watermark; older minutes are not rewritten
        late = minutes[1]
        assert now - COMPACT_LAG - late < COMPACT_LATE
        store.insert_spans(_spans(late, 5, 9))
        assert store.services(late, late + timedelta(minutes=1))[0]["count"] == 20
        assert _rows_per_minute(store)[late][0] > _rows_per_minute(store)[late][1]
        asyncio.run(telemetry.compact(now + timedelta(minutes=2)))
        got = _rows_per_minute(store)
        assert got[late][0] == got[late][1]
        assert store.services(late, late + timedelta(minutes=1))[0]["count"] == 20
        assert got[minutes[2]][0] == got[minutes[2]][1]  # closed since the last pass
    finally:
        telemetry.close()
