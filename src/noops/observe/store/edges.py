"""The service map, kept up to date as spans arrive (no batch job).

An **edge** is a Client span in service A whose child Server span (``ParentSpanId`` = the
client's ``SpanId``, same ``TraceId``) is in service B != A. Spans of one call usually arrive in
different OTLP batches (two processes export them), in either order, so pairing is incremental:

1. every insert also writes its Client spans and its Server spans that have a parent into the
   pairing index ``otel_traces_edge_spans`` (:data:`~.schema.EDGE_SPANS`), tagged with a fresh
   batch number;
2. in the same step, the new index rows are joined with the index (new and earlier rows, within
   :data:`PAIR_HORIZON_NS` of the batch's start times); a pair is counted only if one of its spans
   is new, so each pair is counted once — when its second span arrives;
3. the pairs go into ``otel_traces_edges_1m`` (:data:`~.schema.EDGES`), one row per client
   service, server service, minute of the client span and log latency bucket (:mod:`.rollup`):
   calls, errors (either span has status Error), mTLS calls and client-side duration min/max.

``service_map`` reads only the edge table. The index is trimmed to :data:`INDEX_KEEP_NS` behind
the newest span seen, so a partner arriving more than that late is not paired. DuckDB, which has
no primary key to look the batch's trace ids up by, also removes paired rows from the index so
that it holds only spans still waiting for a partner (a client span then pairs with its first
server child only, and a re-sent server span is not counted twice); ClickHouse keeps them and
finds the batch's traces through the index's ``ORDER BY (TraceId, LinkId)``.

DuckDB builds the index rows column-wise from the insert's Arrow table
(:func:`edge_batch_arrow`, the same rows as :func:`edge_batch`) and, when no index row shares a
trace id with the batch (the usual case: a trace's spans exported together), finds the pairs in
Arrow (:func:`pair_in_batch`, :func:`edge_minutes`) and indexes only the unpaired rows, with the
result the SQL join would give; otherwise it runs the join. On DuckDB the pairing runs inside
the span insert's transaction (one COMMIT: the spans and
their pairs land together or not at all). ClickHouse has no transactions: the pairing runs right
after the span insert, so a crash between the two leaves those spans off the map, never counted
twice. There the index is partitioned by hour and trimmed by dropping whole partitions (no
mutation rewrites its parts).

**What counts as an mTLS hop.** noops runs an egress endpoint inside every instance's network
namespace, ``127.0.0.1:15001`` by default, which carries the call over mTLS, with the app's SVID,
to the gateway and on to the callee. A hop is mTLS when

* the client span's peer is one of the store's ``egress_endpoints``; the peer is, first found:
  ``server.address`` + ``server.port``, else ``net.peer.name`` + ``net.peer.port``, else the
  ``host:port`` of ``url.full`` (or the older ``http.url``); or
* the server span carries the attribute ``noops.mtls`` = ``true`` (set by the platform when the
  request reached the instance over mTLS); or
* the client span carries ``noops.mtls`` = ``true``: the platform's prober sets it when it
  presented its workload certificate to the front door (which carries the call on over mTLS).

An edge's ``mtls`` is true when every call in the window was an mTLS hop.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from typing import Any, Final

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from noops.observe.store._rows import ch_arrow_type, to_ns
from noops.observe.store.base import Edge, Row
from noops.observe.store.rollup import BUCKETS_PER_OCTAVE, MAX_BUCKET, estimate_quantiles
from noops.observe.store.schema import EDGE_SPANS, EDGES

__all__ = [
    "DEFAULT_EGRESS",
    "INDEX_KEEP_NS",
    "MINUTE_NS",
    "PAIR_HORIZON_NS",
    "edge_batch",
    "edge_batch_arrow",
    "edge_minutes",
    "edges_from_rows",
    "is_mtls_client",
    "pair_in_batch",
    "peer_of",
]

DEFAULT_EGRESS: Final = ("127.0.0.1:15001",)
MINUTE_NS: Final = 60 * 1_000_000_000
PAIR_HORIZON_NS: Final = 15 * 60 * 1_000_000_000  # a child starts within this of its parent
INDEX_KEEP_NS: Final = 2 * PAIR_HORIZON_NS

_URL_AUTHORITY: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)")
# The same pattern in RE2 (pyarrow), with the scheme captured too.
_URL_AUTHORITY_RE2: Final = r"^(?P<s>[A-Za-z][A-Za-z0-9+.-]*)://(?:[^@/?#]*@)?(?P<a>[^/?#]+)"
_DEFAULT_PORT: Final = {"http": "80", "https": "443"}


def peer_of(attrs: Mapping[str, str]) -> str | None:
    """The ``host:port`` a client span called, from its attributes (see the module doc)."""
    for host_key, port_key in (("server.address", "server.port"),
                               ("net.peer.name", "net.peer.port")):
        host = attrs.get(host_key)
        if host:
            port = attrs.get(port_key)
            return f"{host}:{port}" if port else host
    for key in ("url.full", "http.url"):
        url = attrs.get(key)
        if url:
            m = _URL_AUTHORITY.match(url)
            if m:
                authority = m.group(1)
                if ":" not in authority.rsplit("]", 1)[-1]:
                    port = _DEFAULT_PORT.get(url.split(":", 1)[0].lower())
                    authority = f"{authority}:{port}" if port else authority
                return authority
    return None


def is_mtls_client(attrs: Mapping[str, str], egress: Collection[str]) -> bool:
    """True when a client span's peer is a noops egress endpoint, or the span says it presented
    a workload certificate (``noops.mtls``)."""
    return attrs.get("noops.mtls", "").lower() == "true" or peer_of(attrs) in egress


def _is_mtls_server(attrs: Mapping[str, str]) -> bool:
    return attrs.get("noops.mtls", "").lower() == "true"


def edge_batch(rows: Sequence[Row], batch: int, egress: Collection[str]) -> pa.Table | None:
    """The pairing-index rows (:data:`~.schema.EDGE_SPANS`) for one insert, or ``None`` when the
    insert has no Client span and no Server span with a parent."""
    cols: dict[str, list[Any]] = {name: [] for name, _ in EDGE_SPANS}
    for row in rows:
        kind = row.get("SpanKind")
        if kind == "Client":
            side, link = 0, row.get("SpanId", "")
        elif kind == "Server" and row.get("ParentSpanId"):
            side, link = 1, row["ParentSpanId"]
        else:
            continue
        attrs = row.get("SpanAttributes") or {}
        mtls = is_mtls_client(attrs, egress) if side == 0 else _is_mtls_server(attrs)
        ts = row.get("Timestamp", 0)
        cols["Batch"].append(batch)
        cols["Side"].append(side)
        cols["TraceId"].append(row.get("TraceId", ""))
        cols["LinkId"].append(link)
        cols["ServiceName"].append(row.get("ServiceName", ""))
        cols["Timestamp"].append(ts if type(ts) is int else to_ns(ts))
        cols["Duration"].append(row.get("Duration", 0))
        cols["IsError"].append(int(row.get("StatusCode") == "Error"))
        cols["Mtls"].append(int(mtls))
    if not cols["Batch"]:
        return None
    return pa.Table.from_arrays([pa.array(cols[n], type=ch_arrow_type(t)) for n, t in EDGE_SPANS],
                                names=[n for n, _ in EDGE_SPANS])


def _nonempty(arr: pa.Array) -> pa.Array:
    """``arr`` with ``''`` turned into null (Python's ``if value:``)."""
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


class _Attrs:
    """Value lookups in a ``Map(String, String)`` column whose maps hold each key once (dicts,
    or the native decoder's maps): one comparison over all keys per lookup, several times
    faster than ``pc.map_lookup``."""

    def __init__(self, maps: pa.ChunkedArray) -> None:
        arr = maps.combine_chunks()
        self.n = len(arr)
        offsets = arr.offsets  # absolute positions in keys/items, which a slice does not cut
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        self.keys = arr.keys.slice(first, last - first)
        self.items = arr.items.slice(first, last - first)
        self.offsets = pc.subtract(offsets, pa.scalar(first, pa.int32()))
        self.nulls = pa.nulls(self.n, pa.string())

    def get(self, key: str) -> pa.Array:
        """Each row's value for ``key``; null where the map lacks it."""
        hit = pc.fill_null(pc.equal(self.keys, key), False)
        # hits before each map's first entry; a map holds the key iff the count steps up
        seen = pc.take(pa.concat_arrays([pa.array([0], pa.int64()),
                                         pc.cumulative_sum(pc.cast(hit, pa.int64()))]),
                       self.offsets)
        has = pc.greater(seen[1:], seen[:-1])
        return pc.replace_with_mask(self.nulls, has, self.items.filter(hit))


def _host_port(attrs: _Attrs, host_key: str, port_key: str) -> pa.Array:
    host = _nonempty(attrs.get(host_key))
    port = _nonempty(attrs.get(port_key))
    joined = pc.binary_join_element_wise(host, port, ":")
    return pc.if_else(pc.is_null(port), host, joined)


def _url_peer(attrs: _Attrs, key: str) -> pa.Array:
    url = _nonempty(attrs.get(key))
    parts = pc.extract_regex(url, _URL_AUTHORITY_RE2)
    authority, scheme = pc.struct_field(parts, "a"), pc.utf8_lower(pc.struct_field(parts, "s"))
    default = pc.if_else(pc.equal(scheme, "http"), "80",
                         pc.if_else(pc.equal(scheme, "https"), "443", pa.scalar(None, pa.string())))
    has_port = pc.match_substring_regex(authority, r":[^\]]*$")
    with_port = pc.binary_join_element_wise(authority, default, ":")
    return pc.if_else(pc.or_(has_port, pc.is_null(default)), authority, with_port)


def edge_batch_arrow(spans: pa.Table, batch: int, egress: Collection[str]) -> pa.Table | None:
    """:func:`edge_batch` for an ``otel_traces`` Arrow table, computed column-wise (no Python
    object per span); the same rows, in the same order."""
    kind = spans.column("SpanKind")
    client = pc.equal(kind, "Client")
    mask = pc.or_(client, pc.and_(pc.equal(kind, "Server"),
                                  pc.not_equal(spans.column("ParentSpanId"), "")))
    if not pc.any(mask).as_py():
        return None
    # computed over every span and filtered once at the end: filtering a map column costs more
    attrs = _Attrs(spans.column("SpanAttributes"))
    flagged = pc.fill_null(pc.equal(pc.utf8_lower(attrs.get("noops.mtls")), "true"), False)
    mtls = flagged
    if egress:
        # peer_of's fallbacks in order, each looked up only if a client span still lacks a peer
        unknown = pc.and_not(client, flagged)
        peer = pa.nulls(len(kind), pa.string())
        for fallback in (partial(_host_port, attrs, "server.address", "server.port"),
                         partial(_host_port, attrs, "net.peer.name", "net.peer.port"),
                         partial(_url_peer, attrs, "url.full"),
                         partial(_url_peer, attrs, "http.url")):
            if not pc.any(pc.and_(unknown, pc.is_null(peer))).as_py():
                break
            peer = pc.coalesce(peer, fallback())
        via_egress = pc.is_in(peer, value_set=pa.array(sorted(egress), pa.string()))
        mtls = pc.or_(flagged, pc.and_(client, pc.fill_null(via_egress, False)))
    cols = {
        "Batch": pa.nulls(len(kind), pa.uint64()).fill_null(batch),
        "Side": pc.if_else(client, pa.scalar(0, pa.uint8()), pa.scalar(1, pa.uint8())),
        "TraceId": spans.column("TraceId"),
        "LinkId": pc.if_else(client, spans.column("SpanId"), spans.column("ParentSpanId")),
        "ServiceName": spans.column("ServiceName"),
        "Timestamp": spans.column("Timestamp"),
        "Duration": spans.column("Duration"),
        "IsError": pc.cast(pc.equal(spans.column("StatusCode"), "Error"), pa.uint8()),
        "Mtls": pc.cast(mtls, pa.uint8()),
    }
    return pa.Table.from_arrays([cols[name] for name, _ in EDGE_SPANS],
                                names=[name for name, _ in EDGE_SPANS]).filter(mask)


_KEY: Final = ["TraceId", "LinkId"]


def pair_in_batch(batch: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The pairs an :func:`edge_batch` table completes by itself (every client row with every
    server row of the same ``TraceId`` and ``LinkId`` in another service), as columns
    ``TraceId, LinkId, ServiceName, Timestamp, Duration, IsError, Mtls`` (the client's) and
    ``ServerService, ServerIsError, ServerMtls``; and the rows whose key is in no such pair
    (what stays in the pairing index). Equal to the SQL pairing when no earlier index row
    shares a trace id with the batch."""
    side = batch.column("Side")
    clients = batch.filter(pc.equal(side, 0)).select(
        [*_KEY, "ServiceName", "Timestamp", "Duration", "IsError", "Mtls"])
    servers = batch.filter(pc.equal(side, 1)).select(
        [*_KEY, "ServiceName", "IsError", "Mtls"]).rename_columns(
        [*_KEY, "ServerService", "ServerIsError", "ServerMtls"])
    pairs = clients.join(servers, keys=_KEY, join_type="inner")
    pairs = pairs.filter(pc.not_equal(pairs.column("ServiceName"), pairs.column("ServerService")))
    if pairs.num_rows == 0:
        return pairs, batch
    keys = pairs.select(_KEY).group_by(_KEY).aggregate([])
    rest = batch.join(keys, keys=_KEY, join_type="left anti")
    return pairs, rest.select([name for name, _ in EDGE_SPANS])


def edge_minutes(pairs: pa.Table) -> pa.Table:
    """:data:`~.schema.EDGES` rows (one per client, server, minute and latency bucket) for
    :func:`pair_in_batch` pairs; the same figures as the SQL pairing writes."""
    stamp = pc.cast(pairs.column("Timestamp"), pa.int64())
    minute = pc.cast(pc.multiply(pc.divide(stamp, 60_000_000_000), 60), pa.timestamp("s"))
    dur = pairs.column("Duration")
    bucket = pc.min_element_wise(pc.floor(pc.multiply(pc.log2(pc.max_element_wise(
        pc.cast(dur, pa.float64()), 1.0)), float(BUCKETS_PER_OCTAVE))), float(MAX_BUCKET))

    def either(a: str, b: str) -> pa.Array:
        one = pc.or_(pc.not_equal(pairs.column(a), 0), pc.not_equal(pairs.column(b), 0))
        return pc.cast(one, pa.uint64())

    tbl = pa.table({"c": pairs.column("ServiceName"), "s": pairs.column("ServerService"),
                    "m": minute, "b": pc.cast(bucket, pa.uint16()), "d": dur,
                    "e": either("IsError", "ServerIsError"), "t": either("Mtls", "ServerMtls")})
    out = tbl.group_by(["c", "s", "m", "b"], use_threads=False).aggregate(
        [("d", "count"), ("e", "sum"), ("t", "sum"), ("d", "min"), ("d", "max")])
    cols = [out.column("c"), out.column("s"), out.column("m"), out.column("b"),
            pc.cast(out.column("d_count"), pa.uint64()), out.column("e_sum"), out.column("t_sum"),
            out.column("d_min"), out.column("d_max")]
    return pa.Table.from_arrays(cols, names=[name for name, _ in EDGES])


def edges_from_rows(rows: Sequence[Sequence[Any]], window_s: float) -> list[Edge]:
    """Edge-table rows ``(client, server, bucket, calls, errors, mtls, min_ns, max_ns)`` summed
    over the window to :class:`~.base.Edge` values, sorted by client, server."""
    groups: dict[tuple[str, str], list[Sequence[Any]]] = defaultdict(list)
    for r in rows:
        groups[(str(r[0]), str(r[1]))].append(r)
    out: list[Edge] = []
    for (client, server), group in sorted(groups.items()):
        calls = sum(int(r[3]) for r in group)
        mtls = sum(int(r[5]) for r in group)
        (p95,) = estimate_quantiles([(int(r[2]), int(r[3])) for r in group], (0.95,),
                                    min(float(r[6]) for r in group),
                                    max(float(r[7]) for r in group))
        out.append(Edge(client=client, server=server, calls=calls,
                        rate_per_s=calls / window_s, errors=sum(int(r[4]) for r in group),
                        p95_ms=p95 / 1e6, mtls=calls > 0 and mtls == calls, mtls_calls=mtls))
    return out
