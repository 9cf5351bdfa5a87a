"""Pure shaping of API answers into what the templates draw (no I/O, easy to unit test).

Contracts:

* An app's telemetry service is the app's name (the runtime sets ``OTEL_SERVICE_NAME`` to it).
* Times stay machine-readable here (ISO 8601 or epoch seconds); the browser formats them in the
  viewer's time zone (``static/console.js``).
* Secret *values* never reach this module: the config API returns secret names only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["app_row", "base_age_days", "chart_series", "expiry_text", "iso_ns", "map_layout",
           "policy_edges", "resource_series", "restarts", "safety", "score_bars", "spark",
           "trace_rows"]


def iso_ns(ns: int | float | None) -> str:
    """Epoch nanoseconds as ISO 8601 UTC ('' for none)."""
    if not ns:
        return ""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def _desired(release: Mapping[str, Any] | None) -> int:
    formation = (release or {}).get("formation") or {}
    return sum(int(v) for v in formation.values() if isinstance(v, int | float))


def spark(points: Sequence[Mapping[str, Any]]) -> list[float]:
    """The p95 (ms) of each minute that saw requests, for a sparkline."""
    return [round(float(p.get("p95_ms") or 0.0), 2) for p in points if p.get("count")]


def restarts(instances: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(p.get("restarts") or 0) for p in instances)


def expiry_text(days: float | None) -> str:
    """Time left on a certificate in the unit that reads best: ``45 d``, ``5.3 h``, ``25 min``,
    ``expired`` ('' for unknown)."""
    if days is None:
        return ""
    if days <= 0:
        return "expired"
    if days >= 2:
        return f"{days:.0f} d"
    hours = days * 24
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{max(1, round(hours * 60))} min"


def safety(summary: Mapping[str, Any] | None, app: str) -> dict[str, Any] | None:
    """The overview's Safety cell of ``app`` from ``/api/access/summary`` (None: not served):
    denials and step-ups in the window, and the earliest expiry of its workload certificates."""
    if summary is None:
        return None
    row = summary.get(app) or {}
    days = row.get("cert_days_left")
    return {"deny": int(row.get("deny") or 0), "step_up": int(row.get("step_up") or 0),
            "cert": expiry_text(days) if days is not None else None,
            "cert_not_after": row.get("cert_not_after"),
            "cert_warn": bool(row.get("cert_expiring")) or (days is not None and days <= 0)}


def score_bars(routes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per route of ``/api/access/scores``: its buckets as bars ``{label, count, pct}`` (height
    relative to the route's fullest bucket), plus the route's totals."""
    out = []
    for r in routes:
        buckets = [int(c) for c in r.get("buckets") or []]
        top = max(buckets, default=0) or 1
        size = 100 // max(len(buckets), 1)
        bars = [{"label": f"{i * size}–{100 if i == len(buckets) - 1 else i * size + size - 1}",
                 "count": c, "pct": round(100.0 * c / top, 1)} for i, c in enumerate(buckets)]
        out.append({"route": r.get("route"), "decisions": int(r.get("decisions") or 0),
                    "mean_score": r.get("mean_score"), "outcomes": dict(r.get("outcomes") or {}),
                    "bars": bars})
    return out


def app_row(app: Mapping[str, Any], stats: Mapping[str, Any] | None,
            alerts: Sequence[Mapping[str, Any]], probes: Sequence[Mapping[str, Any]],
            access: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One overview row: lifecycle facts of ``app`` from the platform API plus its telemetry and
    (``access``: ``/api/access/summary``, None when not served) its Safety cell."""
    release = app.get("release")
    name = str(app["name"])
    mine = [p for p in probes if p.get("app") == name]
    up = [p for p in mine if (p.get("last") or {}).get("ok")]
    firing = [a for a in alerts if a.get("state") == "firing"
              and (a.get("service") == name or a.get("probe_id") in {p.get("id") for p in mine})]
    return {
        "name": name,
        "url": app.get("url"),
        "release": release,
        "image": (release or {}).get("image", ""),
        "digest": ((release or {}).get("digest") or "")[:19],
        "config_version": (release or {}).get("config_version"),
        "ready": int(app.get("ready") or 0),
        "instances": int(app.get("instances") or 0),
        "desired": _desired(release),
        "stats": stats,
        "firing": firing,
        "probes_up": len(up),
        "probes": len(mine),
        "safety": safety(access, name),
    }


def chart_series(points: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Per-minute points as uPlot columns: x (epoch s), rate (req/s), error %, p95 (ms)."""
    xs: list[float | None] = []
    rate: list[float | None] = []
    err: list[float | None] = []
    p95: list[float | None] = []
    for p in points:
        count = int(p.get("count") or 0)
        xs.append(int(p["minute_ns"]) / 1e9)
        rate.append(round(count / 60.0, 4))
        err.append(round(100.0 * int(p.get("errors") or 0) / count, 2) if count else None)
        p95.append(round(float(p["p95_ms"]), 3) if count and p.get("p95_ms") is not None else None)
    return {"x": xs, "rate": rate, "error_pct": err, "p95_ms": p95}


def base_age_days(image: Mapping[str, Any] | None, now: datetime | None = None) -> int | None:
    """Whole days since the image's OS base (run image) was released; None when unknown (a
    stack built with ``SOURCE_DATE_EPOCH=0`` carries 1970 as its date)."""
    raw = (image or {}).get("base_released")
    if not raw:
        return None
    try:
        released = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    if released.tzinfo is None:
        released = released.replace(tzinfo=UTC)
    if released.year < 1990:  # a reproducible build stamped SOURCE_DATE_EPOCH=0: no real date
        return None
    return max(0, ((now or datetime.now(UTC)) - released).days)


def resource_series(cpu: Sequence[Mapping[str, Any]], memory: Sequence[Mapping[str, Any]]
                    ) -> dict[str, Any]:
    """Per-instance gauge points (``/api/metrics/gauge/…?by=noops.instance.id``) as uPlot
    columns on one shared x axis: ``cpu_pct`` (average % of the instance's CPU limit) and
    ``mem_mib`` (average MiB), one list per instance, ``None`` where an instance has no point;
    ``latest`` maps an instance to its last ``(cpu_pct, mem_mib)``."""
    xs = sorted({int(p["bucket_s"]) for p in (*cpu, *memory)})
    names = sorted({str(p["group"]) for p in (*cpu, *memory) if p.get("group")})
    at = {x: i for i, x in enumerate(xs)}

    def columns(points: Sequence[Mapping[str, Any]], scale: float) -> list[list[float | None]]:
        cols: dict[str, list[float | None]] = {n: [None] * len(xs) for n in names}
        for p in points:
            if p.get("group") in cols:
                cols[str(p["group"])][at[int(p["bucket_s"])]] = round(float(p["avg"]) * scale, 2)
        return [cols[n] for n in names]

    cpu_cols, mem_cols = columns(cpu, 100.0), columns(memory, 1 / 2**20)

    def last(col: list[float | None]) -> float | None:
        return next((v for v in reversed(col) if v is not None), None)

    latest = {n: (last(c), last(m)) for n, c, m in zip(names, cpu_cols, mem_cols, strict=True)}
    return {"x": xs, "instances": names, "cpu_pct": cpu_cols, "mem_mib": mem_cols,
            "latest": latest}


def trace_rows(traces: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Slow-trace rows with their ISO time (``at``) and ``failed`` (status Error)."""
    return [{**t, "at": iso_ns(t.get("timestamp_ns")), "failed": t.get("status_code") == "Error"}
            for t in traces]


def policy_edges(edges: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]] | None
                 ) -> list[dict[str, Any]]:
    """Service-map edges (from traces) with the gateway's decisions on the same calls
    (``/api/access/calls``): ``policy`` is ``{"allow": n, "deny": n}``, or None when no decision
    names that caller and app (or the API is not served). A caller whose calls were all denied
    has no server span, so no traced edge: it is added with ``denied_only`` and its count.

    A caller matches an edge's client service by its app name, or by ``app-process`` (the
    platform's prober, ``spiffe://…/app/noops/probe``, reports as ``noops-probe``)."""
    by_pair: dict[tuple[str, str], dict[str, int]] = {}
    for c in calls or []:
        process = str(c.get("caller_spiffe_id") or "").rstrip("/").rsplit("/", 1)[-1]
        for name in {str(c["caller"]), f"{c['caller']}-{process}"}:
            tally = by_pair.setdefault((name, str(c["app"])), {"allow": 0, "deny": 0})
            tally["allow"] += int(c.get("allow") or 0)
            tally["deny"] += int(c.get("deny") or 0)
    out = []
    seen = set()
    for e in edges:
        key = (str(e["client"]), str(e["server"]))
        seen.add(key)
        out.append({**e, "policy": by_pair.get(key) if calls is not None else None,
                    "denied_only": False})
    for c in calls or []:
        key = (str(c["caller"]), str(c["app"]))
        process = str(c.get("caller_spiffe_id") or "").rstrip("/").rsplit("/", 1)[-1]
        traced = key in seen or (f"{key[0]}-{process}", key[1]) in seen
        if not traced and int(c.get("deny") or 0) and not int(c.get("allow") or 0):
            seen.add(key)
            out.append({"client": key[0], "server": key[1], "calls": int(c["deny"]),
                        "rate_per_s": 0.0, "errors": int(c["deny"]), "p95_ms": 0.0,
                        "mtls": True, "mtls_calls": int(c["deny"]),
                        "policy": {"allow": 0, "deny": int(c["deny"])}, "denied_only": True})
    return out


_MIN_COL_W: Final = 380.0  # a 140-wide box and a two-line edge label (~200) side by side


def map_layout(edges: Sequence[Mapping[str, Any]], *, width: int = 900, row_h: int = 110
               ) -> dict[str, Any]:
    """Services as nodes in columns by call depth (callers left of callees), edges between them.

    Returns ``{"nodes": [{name, x, y}], "edges": [{…edge, x1, y1, x2, y2, lx, ly}], "width",
    "height"}``. A cycle is cut where it is found, so every service gets a column."""
    names = sorted({e["client"] for e in edges} | {e["server"] for e in edges})
    callers: dict[str, set[str]] = {n: set() for n in names}
    for e in edges:
        if e["client"] != e["server"]:
            callers[e["server"]].add(e["client"])
    depth: dict[str, int] = {}

    def level(n: str, seen: frozenset[str]) -> int:
        if n in depth:
            return depth[n]
        parents = [c for c in callers[n] if c not in seen]
        depth[n] = 1 + max((level(c, seen | {n}) for c in parents), default=-1)
        return depth[n]

    for n in names:
        level(n, frozenset())
    columns: dict[int, list[str]] = {}
    for n in names:
        columns.setdefault(depth[n], []).append(n)
    ncols = max(columns, default=0) + 1
    col_w = max(width / ncols, _MIN_COL_W)  # room between the boxes for an edge's label
    width = int(col_w * ncols)
    height = max((len(v) for v in columns.values()), default=1) * row_h + 40
    pos: dict[str, tuple[float, float]] = {}
    for col, members in columns.items():
        gap = height / (len(members) + 1)
        for i, n in enumerate(members):
            pos[n] = (col_w * col + col_w / 2, gap * (i + 1))
    nodes = [{"name": n, "x": round(pos[n][0], 1), "y": round(pos[n][1], 1)} for n in names]
    out_edges = []
    for e in edges:
        (x1, y1), (x2, y2) = pos[e["client"]], pos[e["server"]]
        # stop short of the node boxes so the arrow head stays visible
        dx, dy = x2 - x1, y2 - y1
        length = math.hypot(dx, dy) or 1.0
        trim = min(70.0, length / 3)
        # the label sits in the gap just before the callee's column, clear of every box: edges
        # fanning out of one caller (the prober calls every app) would stack labels at the caller
        t = 0.62 if abs(dx) < 1 else min(0.8, max(0.2, 1 - (col_w / 2) / abs(dx)))
        out_edges.append({**e, "x1": round(x1 + dx * trim / length, 1),
                          "y1": round(y1 + dy * trim / length, 1),
                          "x2": round(x2 - dx * trim / length, 1),
                          "y2": round(y2 - dy * trim / length, 1),
                          "lx": round(x1 + dx * t, 1), "ly": round(y1 + dy * t - 10, 1)})
    return {"nodes": nodes, "edges": out_edges, "width": width, "height": int(height)}
