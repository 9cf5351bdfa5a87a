"""The minute rollup: fixed log-spaced latency buckets, maintained on insert.

A span of ``d`` ns falls in bucket ``floor(BUCKETS_PER_OCTAVE * log2(max(d, 1)))`` (capped at
``MAX_BUCKET``); with 8 buckets per doubling a bucket spans a factor 2^(1/8) ≈ 1.09, so a
percentile read back from the geometric middle of its bucket is within ±4.4 % of the exact value
(clamped to the observed min/max). Both backends evaluate the same formula in SQL on insert, so
rollups never need a batch job; readers sum partial rows with ``GROUP BY``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

BUCKETS_PER_OCTAVE: Final = 8
MAX_BUCKET: Final = 511  # 2^(511/8) ns ≈ 1.6e19 ns: beyond any UInt64 duration


def bucket_of(duration_ns: int) -> int:
    """The bucket index SQL computes; used by tests and by Python-side writers."""
    return min(math.floor(BUCKETS_PER_OCTAVE * math.log2(max(duration_ns, 1))), MAX_BUCKET)


def bucket_mid_ns(bucket: int) -> float:
    return float(2 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE))


def estimate_quantiles(
    buckets: Iterable[tuple[int, int]], quantiles: Sequence[float], lo_ns: float, hi_ns: float
) -> list[float]:
    """Estimate quantiles (in ns) from ``(bucket, count)`` pairs, clamped to ``[lo_ns, hi_ns]``."""
    pairs = sorted(buckets)
    total = sum(c for _, c in pairs)
    out: list[float] = []
    for q in quantiles:
        if total == 0:
            out.append(0.0)
            continue
        rank, seen, value = q * total, 0, hi_ns
        for b, c in pairs:
            seen += c
            if seen >= rank:
                value = bucket_mid_ns(b)
                break
        out.append(min(max(value, lo_ns), hi_ns))
    return out


def bucket_floor_ns(bucket: int) -> int:
    """A duration (ns) no longer than any in ``bucket``: its lower bound, lowered by a relative
    margin (far above a double's rounding, far below a bucket's width) so that no float
    rounding of ``log2`` in SQL can put a span of the bucket below it."""
    return max(0, math.floor(2 ** (bucket / BUCKETS_PER_OCTAVE) * (1 - 1e-9)) - 1)


def top_floor_ns(buckets: Iterable[tuple[int, int]], n: int) -> int:
    """From ``(bucket, count)`` pairs of spans that are all in a window: a duration that at
    least ``n`` of them reach, as high as the buckets tell (0 when they hold fewer than ``n``).
    The window's ``n`` longest spans are then exactly its ``n`` longest spans at least that
    long, found without sorting the rest."""
    seen = 0
    for b, c in sorted(buckets, reverse=True):
        seen += int(c)
        if seen >= n:
            return bucket_floor_ns(int(b))
    return 0
