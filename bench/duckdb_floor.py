#!/usr/bin/env python3
"""Benchmark: what DuckDB itself costs to take ``otel_traces`` rows, the floor under any ingest.

A benchmark, not a test: it asserts nothing about time. It answers one question the telemetry
ingest target raises (``bench/telemetry.py``: >= 100 000 spans/s per core, i.e. <= 10 us of
CPU per span for *everything*: HTTP, write-ahead log, decoding, the store and its derived rows):
how much of that budget does the store engine alone take for the exporter's table?

The bench's spans (``bench/telemetry.py``'s ``SpanFactory``: 10 services, ~10 attributes per
span, 10 resource attributes) are decoded once by the native decoder into the Arrow table the
receiver hands the store, then inserted with ``INSERT INTO … SELECT * FROM arrow`` in batches
of ``--batch`` rows, into a fresh DuckDB each time, timing the process's CPU
(``time.process_time``, every DuckDB thread included):

* ``otel_traces``, every column (the store's own insert, without its derived rows);
* the same with the two ``MAP`` columns (``SpanAttributes``, ``ResourceAttributes``) empty;
* the scalar columns only (no ``MAP``, no nested ``Events``/``Links`` arrays);

each in memory (no write-ahead log, no file) and in a file (commit per batch, as the store does).
The same table goes into embedded ClickHouse too (chdb, the store's ``otel_traces`` DDL: the
exporter's MergeTree, codecs and skip indexes, without the materialized views), every column
and with the maps empty (``--no-chdb`` skips it). The peer is the engine itself: the ratio
printed is the store floor against the 10 us budget.

Usage::

    python bench/duckdb_floor.py [--spans 200000] [--batch 5000] [--no-chdb] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from noops.observe.otlp.native import decode_traces_native
from noops.observe.store import schema
from noops.observe.store.duckdb import duck_type

BUDGET_US = 10.0  # 100 000 spans/s per core, all included


def _bench_spans(n: int) -> pa.Table:
    spec = importlib.util.spec_from_file_location("bench_telemetry", Path(__file__).with_name("telemetry.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_telemetry"] = module
    spec.loader.exec_module(module)
    factory = module.SpanFactory()
    start = 1_700_000_000 * 10**9
    tables = []
    for i in range(max(1, n // 2000)):
        body, _ = factory.request([start + (i * 200 + k) * 10**7 for k in range(200)])
        table = decode_traces_native(body)
        assert table is not None, "the native decoder is not built (pip install -e .)"
        tables.append(table)
    return pa.concat_tables(tables)


def _variants(spans: pa.Table) -> dict[str, tuple[pa.Table, list[tuple[str, str]]]]:
    columns = [(n, duck_type(t)) for n, t in schema.TABLES["otel_traces"]]
    empty_maps = spans
    for name in ("SpanAttributes", "ResourceAttributes"):
        i = empty_maps.schema.get_field_index(name)
        field = empty_maps.schema.field(i)
        empty = pa.array([[] for _ in range(len(spans))], type=field.type)
        empty_maps = empty_maps.set_column(i, field, empty)
    scalar = [(n, t) for n, t in columns if not t.startswith("MAP") and not t.endswith("[]")]
    return {
        "otel_traces, every column": (spans, columns),
        "the two MAP columns empty": (empty_maps, columns),
        "scalar columns only": (spans.select([n for n, _ in scalar]), scalar),
    }


def _insert_us(table: pa.Table, columns: list[tuple[str, str]], batch: int, path: str) -> float:
    con = duckdb.connect(path)
    cols = ", ".join(f'"{n}" {t}' for n, t in columns)
    con.execute(f"CREATE TABLE otel_traces ({cols})")
    started = time.process_time()
    for offset in range(0, len(table), batch):
        con.register("_batch", table.slice(offset, batch))
        con.execute("BEGIN")
        con.execute("INSERT INTO otel_traces SELECT * FROM _batch")
        con.execute("COMMIT")
        con.unregister("_batch")
    spent = time.process_time() - started
    con.close()
    return spent / len(table) * 1e6


def _chdb_insert_us(table: pa.Table, batch: int, data: Path) -> float:
    from chdb import session

    from noops.observe.store.clickhouse import create_statements

    s = session.Session(str(data))
    try:
        s.query("CREATE DATABASE IF NOT EXISTS floor")
        s.query("USE floor; " + create_statements()[0])  # otel_traces, as the store makes it
        cols = ", ".join(f"`{c}`" for c in table.column_names)
        started = time.process_time()
        for offset in range(0, len(table), batch):
            part = table.slice(offset, batch)  # noqa: F841 - read by name by Python(part)
            s.query(f"USE floor; INSERT INTO otel_traces ({cols}) SELECT {cols} FROM Python(part)")
        spent = time.process_time() - started
        s.query("DROP DATABASE floor")
    finally:
        s.close()
    return spent / len(table) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--no-chdb", action="store_true", help="DuckDB only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    spans = _bench_spans(args.spans)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="duckdb-floor-") as tmp:
        for name, (table, columns) in _variants(spans).items():
            for where in ("memory", "file"):
                path = ":memory:" if where == "memory" else str(Path(tmp) / f"{len(results)}.duckdb")
                us = _insert_us(table, columns, args.batch, path)
                results.append({"engine": "duckdb", "rows": name, "where": where,
                                "cpu_us_per_span": round(us, 2), "of_budget": round(us / BUDGET_US, 2)})
        if not args.no_chdb:
            variants = _variants(spans)
            for name in ("otel_traces, every column", "the two MAP columns empty"):
                us = _chdb_insert_us(variants[name][0], args.batch, Path(tmp) / "chdb")
                results.append({"engine": "chdb", "rows": name, "where": "file",
                                "cpu_us_per_span": round(us, 2), "of_budget": round(us / BUDGET_US, 2)})
    if args.json:
        print(json.dumps({"spans": len(spans), "batch": args.batch, "results": results}, indent=2))
        return 0
    print(f"DuckDB {duckdb.__version__}, {len(spans)} bench spans, inserts of {args.batch}, "
          f"CPU per span (all threads); budget for everything at 100 000 spans/s per core: "
          f"{BUDGET_US:.0f} us")
    print(f"{'engine':7} {'rows':30} {'where':7} {'us/span':>8} {'x budget':>9}")
    for r in results:
        print(f"{r['engine']:7} {r['rows']:30} {r['where']:7} {r['cpu_us_per_span']:8.2f} "
              f"{r['of_budget']:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
