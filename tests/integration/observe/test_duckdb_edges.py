"""DuckDB's Arrow pairing of self-contained span batches (:func:`noops.observe.store.edges.pair_in_batch`)
writes exactly what the SQL pairing over the index writes, whatever the batching."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from store_harness import make_dataset

import noops.observe.store.duckdb as duckdb_store
from noops.observe.store import DuckDBStore


def _fill(path: Path, spans: list[dict[str, Any]], cuts: list[int]) -> tuple[Any, ...]:
    store = DuckDBStore(path)
    try:
        for lo, hi in zip([0, *cuts], [*cuts, len(spans)], strict=True):
            store.insert_spans(spans[lo:hi])
        edges = store._rows(
            "SELECT ClientService, ServerService, Minute, Bucket, sum(Calls), sum(ErrorCount), "
            "sum(MtlsCount), min(DurationMin), max(DurationMax) FROM otel_traces_edges_1m "
            "GROUP BY ALL ORDER BY ALL")
        index = store._rows("SELECT Side, TraceId, LinkId, ServiceName, Timestamp, Duration, "
                            "IsError, Mtls FROM otel_traces_edge_spans ORDER BY ALL")
        return edges, index
    finally:
        store.close()


@pytest.mark.parametrize("seed", range(4))
def test_arrow_pairing_equals_sql_pairing(tmp_path: Path, seed: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    spans = make_dataset(traces=60, seed=seed, minutes=3).spans
    if seed % 2:  # whole traces per batch: the Arrow path takes most of them
        spans = sorted(spans, key=lambda s: (s["TraceId"], s["SpanId"]))
    cuts = sorted(rnd.sample(range(1, len(spans)), k=rnd.randint(1, 12)))
    arrow = _fill(tmp_path / "arrow.duckdb", spans, cuts)
    monkeypatch.setattr(duckdb_store, "_self_contained", lambda _batch, _index: False)
    sql = _fill(tmp_path / "sql.duckdb", spans, cuts)
    assert arrow == sql
    assert arrow[0], "the data set has service-map edges"
