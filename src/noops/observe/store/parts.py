"""Immutable Parquet parts: how :class:`~.duckdb.DuckDBStore` keeps ``otel_traces`` on disk.

A **part** is one zstd-compressed Parquet file holding the rows of one committed insert (or of
several merged parts), written by pyarrow straight from the insert's Arrow table: rows in
arrival order (roughly time order, so the ``Timestamp`` statistics of each row group stay
tight), dictionary encoding on every column except the random hex ids, where it never pays.
Parts live in one directory per table (:class:`PartDir`); which files belong to the table is
recorded in the store's catalogue (the ``noops_parts`` table of the DuckDB file), not by the
directory listing.

Contract
--------
Writing
    :meth:`PartDir.write` returns only after the file and its directory entry are fsync'd under
    their final name. A part becomes part of the table when its catalogue row commits (in the
    same transaction as the insert's other rows); before that it is an orphan.
Orphans
    Files the catalogue does not list (a crash between the write and the commit, or between a
    merge's commit and the unlinking of the parts it replaced) are removed by
    :meth:`PartDir.sweep` when the store opens; they were never acknowledged.
Immutability
    A part is never rewritten in place: compaction and retention write a new part and swap the
    catalogue rows in one transaction, then unlink the replaced files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

__all__ = ["CHUNK_ROWS", "COMPACT_MIN_PARTS", "COMPACT_ROWS", "ROW_GROUP_ROWS", "Part", "PartDir"]

# Random hex ids (32 or 16 characters, one value per span) do not repeat within a part:
# dictionary encoding them costs time and saves nothing.
_PLAIN: Final = frozenset({"TraceId", "SpanId", "ParentSpanId", "Links.TraceId", "Links.SpanId",
                           "Timestamp", "Duration"})
_ZSTD_LEVEL: Final = 3
# Compaction merges the small parts of single inserts once they hold this many rows together
# (or there are COMPACT_MIN_PARTS of them), so queries open few files (see PartDir.merge for the
# layout of a merged part).
COMPACT_ROWS: Final = 200_000
COMPACT_MIN_PARTS: Final = 64
CHUNK_ROWS: Final = 65_536
ROW_GROUP_ROWS: Final = 8_192


@dataclass(frozen=True)
class Part:
    """A catalogue row: file name (in its :class:`PartDir`), rows, min/max time (ns), level
    (0 for an insert's part, 1 for a merge of them), bytes on disk."""

    name: str
    rows: int
    min_ns: int
    max_ns: int
    level: int
    size: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartDir:
    """The part files of one table, in ``path`` (created if missing); ``time_column`` is the
    column whose min/max a :class:`Part` records."""

    def __init__(self, path: Path, time_column: str) -> None:
        self.path = path
        self.time_column = time_column
        path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> str:
        return str(self.path / name)

    def _props(self, schema: pa.Schema) -> dict[str, object]:
        return {"compression": "zstd", "compression_level": _ZSTD_LEVEL,
                "use_dictionary": [f.name for f in schema if f.name not in _PLAIN]}

    def _bounds(self, table: pa.Table) -> tuple[int, int]:
        mm = pc.min_max(table.column(self.time_column).cast(pa.int64()))
        return int(mm["min"].as_py()), int(mm["max"].as_py())

    def _new_name(self, level: int) -> str:
        return f"{level}-{time.time_ns():020d}-{secrets.token_hex(4)}.parquet"

    def _commit_file(self, tmp: Path, name: str) -> int:
        final = self.path / name
        os.replace(tmp, final)
        _fsync_dir(self.path)
        return final.stat().st_size

    def write(self, table: pa.Table, level: int = 0) -> Part:
        """Write ``table`` (at least one row) as a new part, durably (see the module contract)."""
        name = self._new_name(level)
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "wb") as f:
            pq.write_table(table, f, row_group_size=max(table.num_rows, 1),
                           **self._props(table.schema))
            f.flush()
            os.fsync(f.fileno())
        lo, hi = self._bounds(table)
        return Part(name, int(table.num_rows), lo, hi, level, self._commit_file(tmp, name))

    def merge(self, parts: Iterable[Part], level: int, keep: pa.Expression | None = None,
              cluster: str | None = None) -> Part | None:
        """Write the rows of ``parts`` (only rows matching ``keep`` if given) as one new part of
        ``level``, reading about :data:`CHUNK_ROWS` rows at a time: each chunk, in the order of
        ``parts``, is sorted by ``cluster`` (if given) and written as row groups of
        :data:`ROW_GROUP_ROWS` rows. Parts merged in time order thus give row groups whose
        time statistics prune by chunk and whose ``cluster`` statistics prune within a chunk
        (a trace-id lookup reads about one row group per chunk in its time window). ``None``
        when no row is left."""
        name = self._new_name(level)
        tmp = self.path / f".{name}.tmp"
        writer: pq.ParquetWriter | None = None
        pending: list[pa.Table] = []
        rows, lo, hi = 0, None, None

        def flush() -> None:
            nonlocal writer, rows, lo, hi
            if not pending:
                return
            tbl = pa.concat_tables(pending)
            pending.clear()
            if cluster is not None:
                tbl = tbl.sort_by(cluster)
            if writer is None:
                writer = pq.ParquetWriter(f, tbl.schema, **self._props(tbl.schema))
            writer.write_table(tbl, row_group_size=ROW_GROUP_ROWS)
            a, b = self._bounds(tbl)
            lo, hi = min(a, lo if lo is not None else a), max(b, hi if hi is not None else b)
            rows += tbl.num_rows

        try:
            with open(tmp, "wb") as f:
                held = 0
                for part in parts:
                    with pq.ParquetFile(self.file(part.name)) as src:
                        for rb in src.iter_batches(batch_size=CHUNK_ROWS):
                            tbl = pa.Table.from_batches([rb])
                            if keep is not None:
                                tbl = tbl.filter(keep)
                            if tbl.num_rows == 0:
                                continue
                            pending.append(tbl)
                            held += tbl.num_rows
                            if held >= CHUNK_ROWS:
                                flush()
                                held = 0
                flush()
                if writer is not None:
                    writer.close()
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if writer is None or lo is None or hi is None:
            tmp.unlink(missing_ok=True)
            return None
        return Part(name, rows, lo, hi, level, self._commit_file(tmp, name))

    def remove(self, names: Iterable[str]) -> None:
        """Unlink part files (already out of the catalogue); missing ones are fine."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def sweep(self, listed: Collection[str]) -> list[str]:
        """Remove every file in the directory that is not in ``listed`` (see Orphans); returns
        the names removed."""
        gone = [p.name for p in self.path.iterdir() if p.is_file() and p.name not in listed]
        self.remove(gone)
        return gone

    def size(self) -> int:
        """Bytes of every file in the directory."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
