"""The decision log: one hash-chained, fsync'd JSON line per gateway decision.

Every record has the same fields whether the request was allowed or denied
(:data:`RECORD_FIELDS`, missing ones are ``null``); anything else the caller passes lands under
``extra``. Before a record is written:

* **secrets are redacted**: a value whose key contains one of :data:`SECRET_KEY_PARTS`
  (``authorization``, ``cookie``, ``password``, ``token``, ``secret``, ``totp``, ...) becomes
  ``"[redacted]"`` at any depth, ``Bearer``/``Basic`` credentials inside strings are cut, and
  the query string of ``path`` is replaced by ``?[redacted]``;
* **control characters are escaped** in every key and string (C0, DEL, C1, U+2028/2029 and the
  bidi overrides become ``\\xNN`` / ``\\uNNNN`` text, ``\\`` becomes ``\\\\``), so a value
  can never forge a line or hide text, even after it is decoded and printed.

The chain: ``seq`` counts records from 0 across all files, ``prev_hash`` is the previous
record's ``hash`` (64 zeros for the first) and ``hash`` is SHA-256 over the canonical JSON
(sorted keys, no spaces, ASCII) of the record without ``hash``. Each line is exactly the
canonical JSON of the full record, so :func:`verify` catches any changed byte, and an edited,
deleted, inserted or reordered line breaks ``seq`` or the chain. Cutting lines off the *end*
cannot be seen from the file alone: compare :attr:`AuditLog.head` with a copy kept elsewhere
(``verify(path, expected_head=...)``).

Rotation: when the active file would grow past ``max_bytes`` it is renamed to
``<name>.000001``, ``<name>.000002``, ... (oldest lowest) and a new file continues the chain.
Keep all files; deleting the oldest makes :func:`verify` report a chain that does not start at 0.

One :class:`AuditLog` per file, in one process (a lock serialises threads).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from noops.gate._errors import GateError

_auditfast: ModuleType | None
try:  # records of a RecordTemplate chained in C; the Python path below makes the same bytes
    from noops.gate import _auditfast
except ImportError:  # built by pip install (gcc, python3-dev, libssl-dev)
    _auditfast = None

__all__ = [
    "GENESIS_HASH",
    "RECORD_FIELDS",
    "SECRET_KEY_PARTS",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "JsonTime",
    "RecordTemplate",
    "VerifyResult",
    "canonical_json",
    "json_fragment",
    "read_newest_first",
    "verify",
]

GENESIS_HASH: Final = "0" * 64
RECORD_FIELDS: Final = ("time", "request_id", "user", "device", "route", "method", "path", "policy_version",
                        "contributions", "score", "outcome", "shadow_outcome", "reasons", "client_ip")
SECRET_KEY_PARTS: Final = ("authorization", "cookie", "password", "passwd", "token", "secret", "totp",
                           "api_key", "apikey", "credential", "private_key", "session")
REDACTED: Final = "[redacted]"
_CHAIN_FIELDS: Final = frozenset({"seq", "prev_hash", "hash"})
_UNSAFE_RE: Final = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CREDENTIAL_RE: Final = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/=]+")
_ROTATED_RE: Final = re.compile(r"\.(\d{6})$")
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024


class AuditError(GateError):
    """The audit log cannot be written or read; the message says what to check."""

    exit_code = 12
    http_status = 500


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A record as written: its chain position, hashes and the sanitised fields."""

    seq: int
    prev_hash: str
    hash: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """``ok`` and the number of good records; on failure the 0-based index (across all files) of
    the first bad line and why."""

    ok: bool
    records: int
    first_bad_index: int | None = None
    reason: str = ""


class RecordTemplate:
    """The line layout of records that differ only in a few fields (``variable``), built once
    from :meth:`AuditLog.fragments` by :meth:`AuditLog.template`.

    Both texts a record needs (the hashed one without ``hash``, and the written line) are
    ``%``-format byte strings whose fixed parts are the canonical JSON fragments in sorted key
    order, so filling them gives byte for byte what :func:`canonical_json` makes of the whole
    record. The hashed text's fixed start (every field sorted before the first variable one,
    usually most of the record) is hashed once here; each record hashes only the rest, on a
    copy of that state. ``variable`` values are passed to :meth:`AuditLog.append_fragments` as
    canonical JSON text of already sanitised values, in the order given here, or as a float:
    a Unix time, written as the log writes times (:class:`JsonTime`).

    With the native module (``_auditfast``), ``_fast`` holds the same layout for C, which
    chains runs of such records in :meth:`AuditLog.append_fragments`.
    """

    __slots__ = ("_fast", "_head", "_line", "_line_slots", "_rest", "_rest_slots", "variable")

    def __init__(self, fields: Mapping[str, str], variable: Sequence[str]) -> None:
        self.variable = tuple(variable)
        missing = [name for name in self.variable if name not in fields]
        if missing or _CHAIN_FIELDS & set(fields):
            raise AuditError(f"a record template needs every variable field ({missing} missing) "
                             "and no chain field")
        # slot numbers: 0 seq, 1 prev_hash, 2 hash, 3.. the variable fields
        slots = {"seq": 0, "prev_hash": 1, "hash": 2} | {n: 3 + i for i, n in enumerate(self.variable)}
        hashed, rest_order = self._layout(fields, slots, with_hash=False)
        cut = _first_slot(hashed)
        head = hashed[:cut].replace(b"%%", b"%")
        self._head = hashlib.sha256(head)
        self._rest, self._rest_slots = hashed[cut:], itemgetter(*rest_order)  # >= 2 slots: a tuple
        line, line_order = self._layout(fields, slots, with_hash=True)
        self._line, self._line_slots = line, itemgetter(*line_order)
        self._fast = None
        if _auditfast is not None and len(self.variable) <= _auditfast.MAX_VARIABLES:
            self._fast = _auditfast.Template(head, self._rest, rest_order, line, line_order,
                                             len(self.variable))

    @staticmethod
    def _layout(fields: Mapping[str, str], slots: dict[str, int],
                with_hash: bool) -> tuple[bytes, tuple[int, ...]]:
        keys = sorted({*fields, "seq", "prev_hash", *(("hash",) if with_hash else ())})
        parts: list[str] = []
        order: list[int] = []
        for key in keys:
            if key in slots:
                parts.append(f'"{key}":%s')
                order.append(slots[key])
            else:
                parts.append(f'"{key}":' + fields[key].replace("%", "%%"))
        return ("{" + ",".join(parts) + "}").encode(), tuple(order)

    def fill(self, seq: int, prev_hash: str, values: Sequence[str]) -> tuple[bytes, str]:
        """The line (with its newline) of record ``seq`` after ``prev_hash``, and its hash."""
        if len(values) != len(self.variable):
            raise AuditError(f"a record template takes {len(self.variable)} values "
                             f"({', '.join(self.variable)}), got {len(values)}")
        slot = [b"%d" % seq, b'"' + prev_hash.encode() + b'"', b"", *[v.encode() for v in values]]
        h = self._head.copy()
        h.update(self._rest % self._rest_slots(slot))
        digest = h.hexdigest()
        slot[2] = b'"' + digest.encode() + b'"'
        return self._line % self._line_slots(slot) + b"\n", digest


_TemplateRecord = tuple["RecordTemplate", Sequence[str | float]]


class JsonTime:
    """Unix times as the log writes them (canonical JSON of the ISO 8601 UTC text of
    :func:`_time_text`, microseconds rounded half to even as ``datetime.fromtimestamp``), the
    date and time of day formatted once per second. Not for two threads at once."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now // 1)
        micro = round((now - second) * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self.second:
            self.second = second
            self.prefix = '"' + datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        return f'{self.prefix}{micro:06d}+00:00"'


def _first_slot(fmt: bytes) -> int:
    """Where the first ``%s`` of ``fmt`` starts (``%%`` is a literal percent sign)."""
    at = 0
    while True:
        at = fmt.index(b"%", at)
        if fmt[at + 1:at + 2] == b"s":
            return at
        at += 2


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, ASCII only: the form hashed and written."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def json_fragment(value: object) -> str:
    """``value`` sanitised like a record field (secrets cut, control characters escaped), as
    canonical JSON: what :meth:`AuditLog.append_fragments` takes for one field."""
    return canonical_json(_clean(value))


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape(text: str) -> str:
    return _UNSAFE_RE.sub(_escape_char, text) if _UNSAFE_RE.search(text) else text


def _is_secret_key(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return any(part in lowered for part in SECRET_KEY_PARTS)


def _clean(value: object) -> Any:
    """JSON-ready copy of ``value`` with secrets redacted and strings escaped."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, str):
        if _CREDENTIAL_RE.search(value):
            value = _CREDENTIAL_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return _escape(value)
    if isinstance(value, datetime):
        return _time_text(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = _escape(str(key))
            out[name] = REDACTED if _is_secret_key(str(key)) else _clean(item)
        return out
    if is_dataclass(value) and not isinstance(value, type):
        return _clean(asdict(value))
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_clean(item) for item in value), key=str)
    return _escape(str(value))


def _time_text(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise AuditError("audit time must be timezone-aware (use datetime.now(UTC))")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _chain_files(target: Path) -> list[Path]:
    """The files of one chain, oldest first: ``name.NNNNNN`` then ``name``."""
    if target.is_dir():
        actives = sorted(p for p in target.iterdir() if p.is_file() and p.suffix == ".jsonl")
        if len(actives) != 1:
            raise AuditError(f"{target} must hold exactly one audit log (*.jsonl), found {len(actives)}; "
                             "pass the log file itself")
        target = actives[0]
    rotated = sorted(p for p in target.parent.glob(target.name + ".*") if _ROTATED_RE.search(p.name))
    return [*rotated, target] if target.exists() else rotated


def _read_lines(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        data = path.read_bytes()
        if not data:
            continue
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        else:
            lines[-1] += b"\x00unterminated"   # makes the line fail verification
        yield from lines


def read_newest_first(path_or_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a chain (the active file or its directory, with its rotated files), newest
    first, as decoded JSON objects.

    Read-only: nothing is written or truncated, so it is safe while another process appends. A
    partial last line (a write in progress) and damaged lines are skipped (:func:`verify`
    reports them). Files are read one at a time, newest first: a caller that stops early never
    reads the older ones. Nothing to read (no log yet) yields nothing.
    """
    try:
        files = _chain_files(Path(path_or_dir))
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path_or_dir} ({exc}); check the path") from exc
    for path in reversed(files):
        try:
            lines = list(_read_lines([path]))
        except FileNotFoundError:
            continue   # rotated away while we read; its records are in the next file
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {path} ({exc}); check the path") from exc
        for raw in reversed(lines):
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


def verify(path_or_dir: str | os.PathLike[str], expected_head: str | None = None) -> VerifyResult:
    """Check every line of a chain (the active file or its directory, with its rotated files)."""
    try:
        files = _chain_files(Path(path_or_dir))
        lines = list(_read_lines(files))
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path_or_dir} ({exc}); check the path") from exc
    prev = GENESIS_HASH
    for index, raw in enumerate(lines):
        checked = _check_line(raw, index, prev)
        if isinstance(checked, str):
            return VerifyResult(False, index, index, checked)
        prev = checked[0]
    if expected_head is not None and prev != expected_head:
        return VerifyResult(False, len(lines), len(lines),
                            "the chain ends before the expected head: records were cut off the end")
    return VerifyResult(True, len(lines))


def _check_line(raw: bytes, index: int, prev: str) -> str | tuple[str]:
    """The line's hash (in a 1-tuple) when it is good, else the reason it is bad."""
    try:
        text = raw.decode("ascii")
        record = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "not a JSON record (the line was edited or split)"
    if not isinstance(record, dict) or not record.keys() >= _CHAIN_FIELDS:
        return "not an audit record (seq, prev_hash or hash missing)"
    if canonical_json(record) != text:
        return "the line is not in canonical form (it was edited)"
    if record["seq"] != index:
        return f"seq {record['seq']} at position {index}: a record was deleted, inserted or moved"
    if record["prev_hash"] != prev:
        return "prev_hash does not match the previous record (chain broken)"
    claimed = record.pop("hash")
    if hashlib.sha256(canonical_json(record).encode()).hexdigest() != claimed:
        return "the hash does not match the content (the record was edited)"
    return (claimed,)


class AuditLog:
    """Appends decision records to ``path`` (see the module docstring for the format)."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Callable[[], datetime] | None = None) -> None:
        if max_bytes < 1024:
            raise AuditError("audit max_bytes must be at least 1024")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock = clock or (lambda: datetime.now(UTC))
        self._json_time = JsonTime()  # under _lock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._seq, self._head = self._recover()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path} ({exc}); check the path, "
                             "free space and permissions") from exc

    @property
    def head(self) -> str:
        """The hash of the last record (keep a copy elsewhere to detect cut-off tails)."""
        return self._head

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, record: Mapping[str, Any]) -> AuditRecord:
        """Sanitise, chain, write and fsync one record; return it as written."""
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> list[AuditRecord]:
        """Like :meth:`append` for several records with one ``fsync`` (group commit)."""
        cleaned = [self._prepare(r) for r in records]
        digests = self.append_fragments([{k: canonical_json(v) for k, v in c.items()} for c in cleaned])
        return [AuditRecord(seq, prev, digest, clean)
                for (seq, prev, digest), clean in zip(digests, cleaned, strict=True)]

    def fragments(self, record: Mapping[str, Any]) -> dict[str, str]:
        """``record`` sanitised, as canonical JSON text per field: build it once for records that
        differ only in a few fields, then hand copies to :meth:`append_fragments`."""
        return {k: canonical_json(v) for k, v in self._prepare(record).items()}

    def template(self, fields: Mapping[str, str], variable: Sequence[str]) -> RecordTemplate:
        """A :class:`RecordTemplate` of ``fields`` (:meth:`fragments`) whose ``variable`` fields
        change from record to record; fill it in :meth:`append_fragments`."""
        return RecordTemplate(fields, variable)

    def append_fragments(self, items: Sequence[Mapping[str, str] | _TemplateRecord],
                         sync: bool = True) -> list[tuple[int, str, str]]:
        """Chain, write and fsync records given as :meth:`fragments` (field -> canonical JSON of
        an already sanitised value), or as ``(template, values)``: a :class:`RecordTemplate` and
        its variable fields in its order, each canonical JSON text or a float Unix time. One
        fsync for all; without ``sync`` none (the caller calls :meth:`sync` later). Returns
        ``(seq, prev_hash, hash)`` each.

        The line is assembled from the fragments in sorted key order, which is byte for byte
        what :func:`canonical_json` makes of the whole record, so :func:`verify` is unchanged.
        Runs of template records are chained by the native module when it is there; it stops
        at anything it does not handle the way this method does, which then takes over.
        """
        out: list[tuple[int, str, str]] = []
        sha256 = hashlib.sha256
        items = items if isinstance(items, list) else list(items)
        chain = _auditfast.chain if _auditfast is not None else None
        with self._lock:
            if self._fd < 0:
                raise AuditError("the audit log is closed; open a new AuditLog")
            lines: list[bytes] = []
            seq, head, size = self._seq, self._head, self._size
            try:
                i, n = 0, len(items)
                while i < n:
                    item = items[i]
                    if isinstance(item, tuple):
                        if chain is not None:
                            data, end, seq, head, size = chain(items, i, seq, head, size, self.max_bytes, out)
                            if end > i:
                                lines.append(data)
                                i = end
                                continue
                        values = [v if isinstance(v, str) else self._json_time(v) for v in item[1]]
                        line, digest = item[0].fill(seq, head, values)
                    else:
                        body = {**item, "seq": str(seq), "prev_hash": f'"{head}"'}
                        text = "{" + ",".join(f'"{k}":{body[k]}' for k in sorted(body)) + "}"
                        digest = sha256(text.encode()).hexdigest()
                        body["hash"] = f'"{digest}"'
                        line = ("{" + ",".join(f'"{k}":{body[k]}' for k in sorted(body)) + "}\n").encode()
                    if size and size + len(line) > self.max_bytes:
                        self._write(lines)
                        os.fdatasync(self._fd)
                        lines = []
                        self._rotate()
                        size = 0
                    lines.append(line)
                    size += len(line)
                    out.append((seq, head, digest))
                    seq, head = seq + 1, digest
                    i += 1
                self._write(lines)
                if sync:
                    os.fdatasync(self._fd)  # the data and the file size: all a reader needs
            except OSError as exc:
                raise AuditError(f"cannot write the audit log {self.path} ({exc}); check free space") from exc
            self._seq, self._head, self._size = seq, head, size
        return out

    def sync(self) -> None:
        """Make what was written durable (for :meth:`append_fragments` without ``sync``). Other
        threads may append meanwhile: the lock is held only to take the file."""
        with self._lock:
            if self._fd < 0:
                return
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise AuditError(f"cannot sync the audit log {self.path} ({exc}); check the disk") from exc
        finally:
            os.close(fd)

    def _write(self, lines: list[bytes]) -> None:
        if lines:
            os.write(self._fd, lines[0] if len(lines) == 1 else b"".join(lines))

    def _prepare(self, record: Mapping[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in record.items():
            if key in _CHAIN_FIELDS:
                continue   # the log owns the chain
            if key in RECORD_FIELDS:
                fields[key] = value
            else:
                extra[key] = value
        for name in RECORD_FIELDS:
            fields.setdefault(name, None)
        if fields["time"] is None:
            fields["time"] = self._clock()
        if isinstance(fields["path"], str) and "?" in fields["path"]:
            fields["path"] = fields["path"].split("?", 1)[0] + "?" + REDACTED
        if extra:
            fields["extra"] = extra
        clean: dict[str, Any] = _clean(fields)
        return clean

    def query(self, user: str | None = None, outcome: str | None = None, since: datetime | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
        """Matching records, newest first, at most ``limit``. Reads the files; not for the hot path."""
        cutoff = _time_text(since) if since is not None else None
        out: list[dict[str, Any]] = []
        for entry in read_newest_first(self.path):
            if len(out) >= limit:
                break
            if user is not None and entry.get("user") != user:
                continue
            if outcome is not None and entry.get("outcome") != outcome:
                continue
            if cutoff is not None and not (isinstance(entry.get("time"), str) and entry["time"] >= cutoff):
                continue   # same fixed-width UTC ISO format, so text order is time order
            out.append(entry)
        return out

    def _rotate(self) -> None:
        rotated = [p for p in self.path.parent.glob(self.path.name + ".*") if _ROTATED_RE.search(p.name)]
        number = max((int(_ROTATED_RE.search(p.name).group(1)) for p in rotated), default=0) + 1  # type: ignore[union-attr]
        os.close(self._fd)
        self._fd = -1
        os.rename(self.path, self.path.with_name(f"{self.path.name}.{number:06d}"))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._size = 0

    def _recover(self) -> tuple[int, str]:
        """Next seq and head from the newest record on disk. A partial last line (a crash during a
        write that was never acknowledged) is cut off."""
        files = _chain_files(self.path)
        for path in reversed(files):
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                os.truncate(path, keep)
                data = data[:keep]
            if not data:
                continue
            last = data[:-1].rsplit(b"\n", 1)[-1]
            try:
                entry = json.loads(last)
                return int(entry["seq"]) + 1, str(entry["hash"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(f"the last record of {path} is damaged; run verify on it and move "
                                 "the damaged file aside before writing") from exc
        return 0, GENESIS_HASH
