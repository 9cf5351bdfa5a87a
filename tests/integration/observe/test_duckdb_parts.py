"""DuckDB's ``otel_traces`` as Parquet parts (:mod:`noops.observe.store.parts`): merging keeps
every span, files the catalogue does not list never show up, failed inserts leave nothing, old
table-based stores are migrated, and retention rewrites a part that straddles the cutoff."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from store_harness import T0, make_dataset, ns

from noops.observe.store import DuckDBStore, StoreError, schema
from noops.observe.store.duckdb import duck_type

START, END = T0 - timedelta(hours=1), T0 + timedelta(days=1)


def _parts(tmp: Path) -> list[Path]:
    return sorted((tmp / "telemetry.duckdb.parts" / "otel_traces").iterdir())


def _summary(store: DuckDBStore, trace_ids: list[str]) -> tuple[object, ...]:
    return (store.services(START, END), store.endpoints("api", START, END),
            [store.trace(t) for t in trace_ids], store.service_map(START, END),
            store._rows("SELECT count(*) FROM otel_traces"))


def test_merge_keeps_every_span_and_leaves_one_part(tmp_path: Path) -> None:
    ds = make_dataset(traces=200, seed=3)
    with_parts = DuckDBStore(tmp_path / "telemetry.duckdb")
    try:
        for i in range(0, len(ds.spans), 97):
            with_parts.insert_spans(ds.spans[i:i + 97])
        ids = sorted({s["TraceId"] for s in ds.spans})[:20]
        before = _summary(with_parts, ids)
        inserts = len(range(0, len(ds.spans), 97))
        assert len(_parts(tmp_path)) == inserts
        assert with_parts.compact() == inserts
        assert len(_parts(tmp_path)) == 1
        assert _summary(with_parts, ids) == before
        assert before[-1] == [(len(ds.spans),)]
    finally:
        with_parts.close()
    reopened = DuckDBStore(tmp_path / "telemetry.duckdb")
    try:
        assert _summary(reopened, ids) == before
    finally:
        reopened.close()


def test_unlisted_files_are_swept_on_open(tmp_path: Path) -> None:
    """A part written but never committed (crash before the catalogue row) is not data."""
    ds = make_dataset(traces=30, seed=4)
    store = DuckDBStore(tmp_path / "telemetry.duckdb")
    store.insert_spans(ds.spans)
    store.close()
    (listed,) = _parts(tmp_path)
    orphan = listed.with_name("0-00000000000000000001-deadbeef.parquet")
    shutil.copy(listed, orphan)
    store = DuckDBStore(tmp_path / "telemetry.duckdb")
    try:
        assert not orphan.exists()
        assert store._rows("SELECT count(*) FROM otel_traces") == [(len(ds.spans),)]
    finally:
        store.close()


def test_a_failed_insert_lists_and_leaves_nothing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset(traces=30, seed=5)
    store = DuckDBStore(tmp_path / "telemetry.duckdb")
    try:
        store.insert_spans(ds.spans[:50])

        def broken(*_args: object) -> None:
            raise duckdb.IOException("disk gone")  # the catalogue row cannot be written

        monkeypatch.setattr(DuckDBStore, "_register", staticmethod(broken))
        with pytest.raises(StoreError, match="disk gone"):
            store.insert_spans(ds.spans[50:])
        monkeypatch.undo()
        assert len(_parts(tmp_path)) == 1
        assert store._rows("SELECT count(*) FROM otel_traces") == [(50,)]
        assert store._rows("SELECT count(*) FROM otel_traces_trace_id_ts") == store._rows(
            "SELECT count(DISTINCT TraceId) FROM otel_traces")
        store.insert_spans(ds.spans[50:])  # the retry goes through
        assert store._rows("SELECT count(*) FROM otel_traces") == [(len(ds.spans),)]
    finally:
        store.close()


def test_a_store_with_a_traces_table_is_migrated(tmp_path: Path) -> None:
    ds = make_dataset(traces=20, seed=6)
    path = tmp_path / "telemetry.duckdb"
    con = duckdb.connect(str(path))
    cols = ", ".join(f'"{n}" {duck_type(t)}' for n, t in schema.TRACES)
    con.execute(f"CREATE TABLE otel_traces ({cols})")
    con.execute("INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ServiceName, SpanKind, "
                "SpanName, Duration, SpanAttributes) SELECT make_timestamp_ns(?), ?, ?, ?, ?, ?, "
                "?, MAP {'k': 'v'}", [ns(T0), "t" * 32, "s" * 16, "api", "Server", "GET /", 5])
    con.close()
    store = DuckDBStore(path)
    try:
        (span,) = store._rows("SELECT TraceId, SpanAttributes, Duration FROM otel_traces")
        assert span == ("t" * 32, {"k": "v"}, 5)
        assert store._rows("SELECT table_type FROM information_schema.tables "
                           "WHERE table_name = 'otel_traces'") == [("VIEW",)]
        store.insert_spans(ds.spans)
        assert store._rows("SELECT count(*) FROM otel_traces") == [(len(ds.spans) + 1,)]
    finally:
        store.close()


def test_retention_rewrites_the_part_across_the_cutoff(tmp_path: Path) -> None:
    old = make_dataset(traces=20, seed=8, t0=T0 - timedelta(days=2), minutes=1)
    new = make_dataset(traces=20, seed=9, minutes=1)
    store = DuckDBStore(tmp_path / "telemetry.duckdb")
    try:
        store.insert_spans(old.spans + new.spans)  # one insert: one part holding both
        store.retention("traces", timedelta(days=1), now=T0 + timedelta(minutes=5))
        assert store._rows("SELECT count(*) FROM otel_traces") == [(len(new.spans),)]
        assert store.trace(old.spans[0]["TraceId"]) == []
        assert len(_parts(tmp_path)) == 1
        store.retention("traces", timedelta(minutes=1), now=T0 + timedelta(days=1))
        assert store._rows("SELECT count(*) FROM otel_traces") == [(0,)]
        assert _parts(tmp_path) == []
        assert store.services(START, END) == []
    finally:
        store.close()
