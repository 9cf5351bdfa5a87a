"""What the platform knows about a telemetry sender, written over what the sender claims.

An app's OpenTelemetry SDK says which service it is (``service.name`` and the other resource
attributes); that is a claim, and an app could report under another app's name or instance.
Every instance reaches the receiver only through its own monitor process (the in-namespace
``127.0.0.1:4318`` is forwarded to the receiver's Unix socket), so the receiver knows the sender
from the socket's peer credentials (``SO_PEERCRED``: the monitor's pid), and the platform maps
that pid to the instance. :func:`stamp` then rewrites every resource of the request: the
verified attributes (``service.name`` = the app, ``noops.app``, ``noops.instance.id``,
``noops.process``) replace any the sender set under those keys; everything else is kept.

The rewrite happens before the request is decoded and written to the WAL, so what is stored,
and what a replay after a crash stores, is the stamped request. Protobuf bodies are rewritten
on the wire (only the request's top level and each resource group are walked, the spans, logs
and points are copied as they are); JSON bodies are parsed and written back. The verified
attributes go first in each resource (the decoders keep a map's first ``MAX_ATTRIBUTES``
entries, so a sender cannot push them out with many of its own), and a request may hold at
most :data:`MAX_GROUPS` resource groups (an SDK sends one): each gains the verified
attributes, so many empty groups would otherwise blow a small body up a hundredfold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from noops.observe.otlp.decode import CONTENT_TYPE_JSON, OtlpDecodeError, OtlpTooLargeError

__all__ = ["MAX_GROUPS", "stamp"]

MAX_GROUPS = 256
"""Resource groups one stamped request may hold."""

# ``Export{Trace,Logs,Metrics}ServiceRequest``: field 1 is the repeated resource group
# (``ResourceSpans``/``ResourceLogs``/``ResourceMetrics``), whose field 1 is its ``Resource``,
# whose field 1 is a repeated ``KeyValue`` (key = 1, value = 2 an ``AnyValue``, string = 1).
_GROUP = _RESOURCE = _ATTRIBUTE = _KEY = _STRING = 1
_VALUE = 2
_LEN = 2
_JSON_GROUPS = ("resourceSpans", "resourceLogs", "resourceMetrics")


def stamp(body: bytes, media: str, verified: Mapping[str, str]) -> bytes:
    """``body`` (an OTLP export request of any signal, protobuf or JSON, uncompressed) with
    every resource's attributes under the keys of ``verified`` replaced by ``verified``'s
    values. A body that is not OTLP is an :class:`OtlpDecodeError` (for protobuf; a bad JSON
    body is returned as it is, for the decoder to refuse)."""
    if media == CONTENT_TYPE_JSON:
        return _stamp_json(body, verified)
    keys = frozenset(k.encode() for k in verified)
    added = b"".join(_len(_ATTRIBUTE, _len(_KEY, k.encode()) + _len(_VALUE, _len(_STRING, v.encode())))
                     for k, v in verified.items())
    out, groups = bytearray(), 0
    for field, wire, start, value, end in _fields(body):
        if field == _GROUP and wire == _LEN:
            groups += 1
            if groups > MAX_GROUPS:
                raise _too_many()
            out += _len(_GROUP, _stamp_group(body[value:end], keys, added))
        else:
            out += body[start:end]
    return bytes(out)


def _too_many() -> OtlpTooLargeError:
    return OtlpTooLargeError(f"a request from an app may hold at most {MAX_GROUPS} resource "
                             "groups (an OpenTelemetry SDK sends one per request)")


def _stamp_group(group: bytes, keys: frozenset[bytes], added: bytes) -> bytes:
    """A resource group with one ``Resource``: ``added``, then the attributes of all its
    ``Resource`` fields (protobuf merges repeated ones) but those under ``keys``; the group's
    other fields as they were."""
    attributes, other, rest = bytearray(), bytearray(), bytearray()
    for field, wire, start, value, end in _fields(group):
        if field != _RESOURCE or wire != _LEN:
            rest += group[start:end]
            continue
        resource = group[value:end]
        for f, w, s, v, e in _fields(resource):
            if f == _ATTRIBUTE and w == _LEN:
                if _key(resource[v:e]) not in keys:
                    attributes += resource[s:e]
            else:
                other += resource[s:e]
    return _len(_RESOURCE, added + bytes(attributes + other)) + bytes(rest)


def _key(kv: bytes) -> bytes:
    key = b""
    for field, wire, _start, value, end in _fields(kv):
        if field == _KEY and wire == _LEN:
            key = kv[value:end]  # the last one wins, as when protobuf parses it
    return key


def _fields(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """``(field, wire type, start, value start, end)`` of each field of one message."""
    i, n = 0, len(buf)
    while i < n:
        start = i
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise OtlpDecodeError("body is not valid OTLP protobuf: field number 0")
        if wire == 0:
            _, end = _varint(buf, i)
        elif wire == 1:
            end = i + 8
        elif wire == _LEN:
            size, i = _varint(buf, i)
            end = i + size
        elif wire == 5:
            end = i + 4
        else:
            raise OtlpDecodeError(f"body is not valid OTLP protobuf: wire type {wire}")
        if end > n:
            raise OtlpDecodeError("body is not valid OTLP protobuf: a field runs past the end")
        yield field, wire, start, i, end
        i = end


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise OtlpDecodeError("body is not valid OTLP protobuf: a truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _stamp_json(body: bytes, verified: Mapping[str, str]) -> bytes:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body  # the decoder refuses it with its own message
    if not isinstance(doc, dict):
        return body
    added = [{"key": k, "value": {"stringValue": v}} for k, v in verified.items()]
    for name in _JSON_GROUPS:
        groups = doc.get(name)
        if isinstance(groups, list) and len(groups) > MAX_GROUPS:
            raise _too_many()
        for group in groups if isinstance(groups, list) else ():
            if not isinstance(group, dict):
                continue  # refused by the decoder
            if group.get("resource") is None:
                group["resource"] = {}
            resource = group["resource"]
            if isinstance(resource, dict):
                attributes = resource.get("attributes") or []
                if isinstance(attributes, list):
                    resource["attributes"] = added + [
                        a for a in attributes
                        if not (isinstance(a, dict) and isinstance(a.get("key"), str)
                                and a["key"] in verified)]
    return json.dumps(doc, separators=(",", ":")).encode()
