"""Backend-neutral halves of the APM queries: each backend's SQL returns compact groups, these
functions finish them the same way for every backend (error-message normalisation, attribute
correlation scores, the endpoint cardinality guard)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from noops.observe.store.base import Correlation, ErrorGroup, StoreUsageError
from noops.observe.store.edges import MINUTE_NS

__all__ = [
    "CORRELATION_RUNS",
    "CORRELATION_SAMPLE",
    "CORRELATION_SLICES",
    "OTHER",
    "cohort_correlations",
    "cohorts_of",
    "correlations",
    "error_groups",
    "minute_slices",
    "normalise",
    "sample_slices",
    "top_names",
]

OTHER: Final = "other"

_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                          r"[0-9a-fA-F]{12}")
_HEX: Final = re.compile(r"\b(?:0[xX][0-9a-fA-F]+|(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,})\b")
_NUMBER: Final = re.compile(r"\d+(?:\.\d+)?")


def normalise(message: str) -> str:
    """The grouping form of an error message: UUIDs become ``<uuid>``, hex ids (``0x…`` or eight
    or more hex digits with at least one digit) ``<hex>``, other numbers ``<n>``."""
    message = _UUID.sub("<uuid>", message)
    message = _HEX.sub("<hex>", message)
    return _NUMBER.sub("<n>", message)


def error_groups(rows: Sequence[Sequence[Any]], limit: int) -> list[ErrorGroup]:
    """Merge SQL groups ``(service, endpoint, type, raw message, count, first_ns, last_ns,
    sample_trace_id)`` whose messages normalise alike."""
    merged: dict[tuple[str, str, str, str], ErrorGroup] = {}
    for svc, ep, etype, raw, count, first, last, sample in rows:
        key = (str(svc), str(ep), str(etype), normalise(str(raw)))
        group = merged.get(key)
        if group is None:
            merged[key] = ErrorGroup(
                service=key[0], endpoint=key[1], exception_type=key[2], message=key[3],
                count=int(count), first_seen_ns=int(first), last_seen_ns=int(last),
                sample_trace_id=str(sample), sample_message=str(raw))
            continue
        group["count"] += int(count)
        group["first_seen_ns"] = min(group["first_seen_ns"], int(first))
        if (int(last), str(sample)) > (group["last_seen_ns"], group["sample_trace_id"]):
            group["last_seen_ns"] = int(last)
            group["sample_trace_id"] = str(sample)
            group["sample_message"] = str(raw)
    out = sorted(merged.values(), key=lambda g: (-g["count"], -g["last_seen_ns"], g["service"],
                                                 g["endpoint"], g["message"]))
    return out[:limit]


def cohorts_of(slow_ms: float | None, failed: bool) -> list[tuple[str, float]]:
    """The cohorts a correlation asks about, in answer order: ``("slow", ns)`` and/or
    ``("failed", 0)``."""
    if slow_ms is None and not failed:
        raise StoreUsageError("correlations compare slow spans (slow_ms=…), failed spans "
                              "(failed=True) or both: give at least one")
    out: list[tuple[str, float]] = []
    if slow_ms is not None:
        if not slow_ms >= 0:
            raise StoreUsageError(f"slow_ms must be a number >= 0, not {slow_ms}")
        out.append(("slow", slow_ms * 1e6))
    if failed:
        out.append(("failed", 0.0))
    return out


def cohort_correlations(rows: Sequence[Sequence[Any]], totals: Sequence[Any],
                        cohorts: Sequence[str], limit: int) -> list[Correlation]:
    """:func:`correlations` of several cohorts read in one pass: SQL rows ``(source, key,
    value, hit_1, miss_1, hit_2, miss_2, …)`` and ``totals`` ``(hit_1, miss_1, …)``, one pair
    per cohort in ``cohorts`` order; the answer is each cohort's, in that order."""
    out: list[Correlation] = []
    for j, cohort in enumerate(cohorts):
        mine = [(r[0], r[1], r[2], r[3 + 2 * j], r[4 + 2 * j]) for r in rows
                if int(r[3 + 2 * j]) > 0]
        out += correlations(mine, int(totals[2 * j] or 0), int(totals[2 * j + 1] or 0), limit,
                            cohort=cohort)
    return out


CORRELATION_SAMPLE: Final = 10_000
"""Entry spans above which :func:`sample_slices` makes correlations read a sample (of 10 000
spans: ~200 failed ones at a 2 % error rate; a cohort share is then within a few points)."""
CORRELATION_SLICES: Final = 64
"""Equal time slices a correlation window is cut into to pick its sample from."""


CORRELATION_RUNS: Final = 2
"""Runs of adjacent slices a sample is read from (wide runs skip more of the table: each run
costs at least the storage blocks it starts and ends in)."""


def minute_slices(minutes: Sequence[tuple[int, int]], start_ns: int, end_ns: int, slices: int
                  ) -> list[tuple[int, int]]:
    """``(slice, spans)`` for :func:`sample_slices` from the minute rollup's ``(minute_ns,
    spans)`` counts: each minute's spans shared out over the ``slices`` equal slices of the
    window ``[start_ns, end_ns)`` in proportion to the time they overlap it (a minute holds
    several slices of a short window), rounded up so that no slice with spans reads as empty.
    Estimates: enough to choose a sample by, without reading the spans."""
    width = (end_ns - start_ns) / slices
    shares = [0.0] * slices
    for minute, count in minutes:
        lo, hi = max(int(minute), start_ns), min(int(minute) + MINUTE_NS, end_ns)
        i = max(0, int((lo - start_ns) // width))
        while hi > lo and i < slices:
            a, b = max(lo, start_ns + i * width), min(hi, start_ns + (i + 1) * width)
            shares[i] += int(count) * max(0.0, b - a) / MINUTE_NS
            i += 1
            if start_ns + i * width >= hi:
                break
    return [(i, math.ceil(n)) for i, n in enumerate(shares) if n > 0]


def sample_slices(counts: Sequence[tuple[int, int]], sample: int, slices: int,
                  runs: int = CORRELATION_RUNS) -> list[int] | None:
    """Which of ``slices`` equal time slices of a window a correlation reads, from ``(slice,
    spans)`` counts: ``None`` (all of them, exact) when the window holds at most ``sample``
    spans, else ``runs`` runs of adjacent slices, one at the end of each of ``runs`` equal
    parts of the window (so the newest spans are always read), each as wide as it takes for
    the runs to hold ``sample`` spans (empty slices left out). Reading the attribute maps of
    every span is what a correlation costs; whole runs of time let the store skip the rest of
    the window by its time index (zone maps, partitions), where a per-span sample would still
    read every block."""
    by_slice = {i: n for i, n in counts if n}
    total = sum(by_slice.values())
    if total <= sample:
        return None
    runs = min(runs, slices)
    ends = [(j + 1) * slices // runs for j in range(runs)]
    width = max(1, -(-sample * slices // (total * runs)))
    while True:
        chosen = sorted(i for end in ends for i in range(max(end - width, 0), end)
                        if i in by_slice)
        if sum(by_slice[i] for i in chosen) >= sample or width >= slices // runs:
            return chosen
        width += 1


UNIQUE_KEY_MIN_VALUES: Final = 5
"""See :func:`correlations`."""


def correlations(rows: Sequence[Sequence[Any]], cohort_total: int, rest_total: int,
                 limit: int, *, cohort: str) -> list[Correlation]:
    """Score SQL rows ``(source, key, value, cohort_count, rest_count)`` of the ``cohort``
    (``"slow"``, ``"failed"``): ``score`` is the
    cohort share minus the baseline share; only over-represented pairs are kept. With no
    baseline (every span in the cohort) nothing stands out and the answer is empty.

    Keys that are unique per span (a client port, a request id, a timestamp) explain nothing
    and would crowd out what does: a key with at least :data:`UNIQUE_KEY_MIN_VALUES` values in
    the cohort, more values than half the spans carrying them, is left out."""
    if cohort_total == 0 or rest_total == 0:
        return []
    values: Counter[tuple[str, str]] = Counter()
    carriers: Counter[tuple[str, str]] = Counter()
    for source, key, _value, hit, miss in rows:
        values[(source, key)] += 1
        carriers[(source, key)] += int(hit) + int(miss)
    unique_per_span = {k for k, n in values.items()
                       if n >= UNIQUE_KEY_MIN_VALUES and n > carriers[k] / 2}
    out: list[Correlation] = []
    for source, key, value, hit, miss in rows:
        if (source, key) in unique_per_span:
            continue
        share, base = int(hit) / cohort_total, int(miss) / rest_total
        if share > base:
            out.append(Correlation(cohort=cohort, source=str(source), key=str(key),
                                   value=str(value),
                                   cohort_pct=100 * share, baseline_pct=100 * base,
                                   score=share - base))
    out.sort(key=lambda c: (-c["score"], -c["cohort_pct"], c["source"], c["key"], c["value"]))
    return out[:limit]


def top_names(counts: Sequence[tuple[str, int]], max_endpoints: int) -> list[str] | None:
    """The names kept by the cardinality guard, or ``None`` when no folding is needed."""
    if max_endpoints < 2:
        raise StoreUsageError(f"max_endpoints must be at least 2, not {max_endpoints}")
    if len(counts) <= max_endpoints:
        return None
    ranked = sorted(counts, key=lambda c: (-int(c[1]), str(c[0])))
    return [str(n) for n, _ in ranked[:max_endpoints - 1]]
