"""noops.gate.audit: hash-chained decision records, redaction, escaping, rotation, verify, query."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noops.gate import audit
from noops.gate.audit import RECORD_FIELDS, AuditError, AuditLog, canonical_json, json_fragment, verify
from noops.gate.trust import Contribution

T0 = datetime(2026, 5, 6, 10, 0, tzinfo=UTC)


def record(i: int, outcome: str = "allow", user: str = "alice", **extra: object) -> dict[str, object]:
    return {"time": T0 + timedelta(seconds=i), "request_id": f"r{i}", "user": user, "device": "d1",
            "route": "site", "method": "GET", "path": f"/p/{i}", "policy_version": "sha256:ab",
            "contributions": [Contribution("auth", "verified", 30, "totp 1 min ago")], "score": 30,
            "outcome": outcome, "reasons": [] if outcome == "allow" else ["score_below_min"],
            "client_ip": "10.0.0.1", **extra}


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_fields_for_allow_and_deny_and_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    a = log.append(record(0))
    b = log.append({"outcome": "deny", "reasons": ["no_route"]})
    log.close()
    allow, deny = lines(tmp_path / "audit.jsonl")
    assert allow.keys() == deny.keys() == {*RECORD_FIELDS, "seq", "prev_hash", "hash"}
    assert deny["user"] is None
    assert (a.seq, b.seq, b.prev_hash) == (0, 1, a.hash)
    assert allow["contributions"] == [{"signal": "auth", "source": "verified", "points": 30,
                                       "reason": "totp 1 min ago"}]
    assert allow["time"] == "2026-05-06T10:00:00.000000+00:00"
    assert verify(tmp_path / "audit.jsonl").ok
    assert verify(tmp_path).records == 2


def test_template_lines_equal_whole_records(tmp_path: Path) -> None:
    """A record filled into a template (a reused decision) is byte for byte the line the whole
    record makes, chained with the others; a value with ``%`` in a fixed field stays literal."""
    whole = AuditLog(tmp_path / "whole.jsonl", clock=lambda: T0)
    filled = AuditLog(tmp_path / "filled.jsonl", clock=lambda: T0)
    base = record(0, user="50%-done")
    template = filled.template(filled.fragments(base), ("time", "request_id"))
    for i in range(3):
        rec = {**base, "time": T0 + timedelta(seconds=i), "request_id": f"r{i}\n"}
        whole.append(rec)
        filled.append_fragments([(template, (json_fragment(rec["time"]), json_fragment(rec["request_id"])))])
    filled.append({"outcome": "deny"})  # whole records and templates share one chain
    whole.append({"outcome": "deny"})
    whole.close()
    filled.close()
    assert (tmp_path / "filled.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert verify(tmp_path / "filled.jsonl").records == 4
    assert lines(tmp_path / "filled.jsonl")[2]["request_id"] == "r2\\x0a"
    with pytest.raises(AuditError, match="takes 2 values"):
        AuditLog(tmp_path / "other.jsonl").append_fragments([(template, ("x",))])
    with pytest.raises(AuditError, match="missing"):
        filled.template({"user": '"a"'}, ("time",))


def test_native_chaining_is_built() -> None:
    """The C path is part of the install (pip builds it); without it the same bytes come slower."""
    assert audit._auditfast is not None


# Times near the edges the formatting must get right: a second's start and end, microseconds
# rounded half to even, far years.
_TIMES = st.one_of(
    st.floats(min_value=0, max_value=253402300799.9999, allow_nan=False),
    st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999995),
    st.integers(0, 4_000_000_000).map(lambda s: s + 0.0000005),
    st.integers(0, 4_000_000_000).map(float),
    # an odd multiple of 1/128 s is exactly half a microsecond past a whole one
    st.tuples(st.integers(0, 4_000_000_000), st.integers(0, 63)).map(lambda t: t[0] + (2 * t[1] + 1) / 128),
)
_FIELD = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(base=st.fixed_dictionaries({"user": _FIELD, "path": _FIELD, "route": _FIELD}),
       records=st.lists(st.tuples(_TIMES, _FIELD, st.booleans()), min_size=1, max_size=12),
       max_bytes=st.sampled_from([1024, 2048, 1 << 20]))
def test_native_chain_writes_what_whole_records_write(base: dict[str, str],
                                                      records: list[tuple[float, str, bool]],
                                                      max_bytes: int) -> None:
    """Template records chained in C (float times, request ids as JSON, rotation at any record)
    are byte for byte the whole records the Python path writes, with the same chain, mixed
    with whole records; without the native module the template path writes them too."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        whole_log = AuditLog(root / "whole" / "a.jsonl", max_bytes=max_bytes)
        logs = {"native": AuditLog(root / "native" / "a.jsonl", max_bytes=max_bytes)}
        native = audit._auditfast
        audit._auditfast = None
        try:
            logs["python"] = AuditLog(root / "python" / "a.jsonl", max_bytes=max_bytes)
            python_template = logs["python"].template(logs["python"].fragments(record(0, **base)),
                                                      ("time", "request_id"))
        finally:
            audit._auditfast = native
        native_template = logs["native"].template(logs["native"].fragments(record(0, **base)),
                                                  ("time", "request_id"))
        templates = {"native": native_template, "python": python_template}
        assert native_template._fast is not None and python_template._fast is None
        probe = [(native_template, (records[0][0], '"r"'))] * 2  # the C path takes these itself
        assert native.chain(probe, 0, 0, "0" * 64, 0, 1 << 20, [])[1] == 2
        got: dict[str, list[tuple[int, str, str]]] = {"native": [], "python": [], "whole": []}
        for now, rid, whole_too in records:
            rec = {**record(0, **base), "time": datetime.fromtimestamp(now, UTC), "request_id": rid}
            got["whole"] += [(r.seq, r.prev_hash, r.hash) for r in whole_log.append_many([rec] * 2)]
            for name, log in logs.items():
                item = (templates[name], (now, json_fragment(rid)))
                got[name] += log.append_fragments([item, item], sync=False)
            if whole_too:
                deny = {"outcome": "deny", "time": T0, "request_id": rid}
                got["whole"] += [(r.seq, r.prev_hash, r.hash) for r in whole_log.append_many([deny])]
                for name, log in logs.items():
                    got[name] += log.append_fragments([log.fragments(deny)])
        for log in (whole_log, *logs.values()):
            log.close()
        assert got["native"] == got["python"] == got["whole"]

        def files(name: str) -> list[bytes]:
            return [p.read_bytes() for p in sorted((root / name).iterdir())]
        assert files("native") == files("python") == files("whole")
        assert verify(root / "native").records == len(got["whole"])


class _Str(str):
    pass


@pytest.mark.parametrize("value", [-1.0, 253402300800.0, float("nan"), 7, '"caf\u00e9"', _Str('"r"')],
                         ids=["negative", "year_10000", "nan", "int", "non_ascii", "str_subclass"])
def test_native_chain_leaves_what_it_does_not_handle_to_python(tmp_path: Path, value: object) -> None:
    """The C path stops at a value it does not write the Python way; the record is still
    written, the Python way. Beyond values: a chain head that is not a 64-digit hash, a
    sequence number or size too large for C, or more variables than it takes."""
    native = audit._auditfast
    assert native is not None
    log = AuditLog(tmp_path / "a.jsonl")
    template = log.template(log.fragments(record(0)), ("time", "request_id"))
    item = (template, (1.5, value))
    assert native.chain([item], 0, 0, "0" * 64, 0, 1 << 20, [])[1] == 0
    good = (template, (1.5, '"r"'))
    for seq, head, size, max_bytes in ((0, "x" * 65, 0, 1 << 20), (2**63 - 1, "0" * 64, 0, 1 << 20),
                                       (0, "0" * 64, 2**64, 1 << 20), (0, "0" * 64, 0, float("inf"))):
        assert native.chain([good], 0, seq, head, size, max_bytes, [])[1] == 0
    nine = tuple(f"v{i}" for i in range(native.MAX_VARIABLES + 1))
    assert log.template(dict.fromkeys(nine, '"x"'), nine)._fast is None
    try:
        audit._auditfast = None
        python_log = AuditLog(tmp_path / "b.jsonl")
        python_template = python_log.template(python_log.fragments(record(0)), ("time", "request_id"))
        try:
            expected: object = python_log.append_fragments([(python_template, (1.5, value))])
        except ValueError as exc:  # a time datetime cannot hold: refused the same way
            expected = type(exc)
    finally:
        audit._auditfast = native
    if expected is ValueError:
        with pytest.raises(ValueError):
            log.append_fragments([item])
    else:
        assert log.append_fragments([item]) == expected
    log.close()
    python_log.close()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_secrets_are_never_logged(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(record(0, headers={"Authorization": "Bearer abc.def", "Cookie": "sid=s3cr3t",
                                  "X-Auth-Token": "tok", "user-agent": "curl"},
                      password="hunter2", totp="123456", client_secret="cs", session_id="sess",
                      note="sent Bearer eyJhbGciOi.x.y by mistake", path="/login?token=leaky"))
    log.close()
    text = (tmp_path / "audit.jsonl").read_text()
    for secret in ("abc.def", "s3cr3t", "tok\"", "hunter2", "123456", "\"cs\"", "sess\"", "eyJhbGciOi",
                   "leaky"):
        assert secret not in text, secret
    entry = lines(tmp_path / "audit.jsonl")[0]
    assert entry["extra"]["headers"]["user-agent"] == "curl"   # type: ignore[index]
    assert entry["extra"]["headers"]["Authorization"] == "[redacted]"   # type: ignore[index]
    assert entry["path"] == "/login?[redacted]"
    assert verify(tmp_path / "audit.jsonl").ok


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    forged = 'alice\r\n{"user":"admin","outcome":"allow"}\x1b[2J\u2028\u202e'
    written = log.append(record(0, user=forged, **{"bad\nkey": "x"}))
    log.close()
    raw = (tmp_path / "audit.jsonl").read_bytes()
    assert raw.count(b"\n") == 1
    entry = lines(tmp_path / "audit.jsonl")[0]
    assert entry["user"] == 'alice\\x0d\\x0a{"user":"admin","outcome":"allow"}\\x1b[2J\\u2028\\u202e'
    assert entry["extra"] == {"bad\\x0akey": "x"}
    assert written.fields["user"] == entry["user"]
    assert all(ord(c) >= 0x20 for c in str(entry["user"]))


def test_verify_detects_edit_delete_insert_reorder(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for i in range(5):
            log.append(record(i))
    good = path.read_text().splitlines(keepends=True)

    def check(new: list[str]) -> tuple[bool, int | None]:
        path.write_text("".join(new))
        result = verify(path)
        return result.ok, result.first_bad_index

    assert check(good) == (True, None)
    flipped = good[2].replace('"outcome":"allow"', '"outcome":"deny"')
    assert check([*good[:2], flipped, *good[3:]]) == (False, 2)
    assert check([*good[:1], *good[2:]]) == (False, 1)
    assert check([*good[:3], good[1], *good[3:]]) == (False, 3)
    assert check([good[0], good[2], good[1], *good[3:]]) == (False, 1)
    # re-hashing an edited record does not help: the next record's prev_hash breaks
    edited = json.loads(good[1])
    edited["user"] = "mallory"
    del edited["hash"]
    edited["hash"] = hashlib.sha256(canonical_json(edited).encode()).hexdigest()
    assert check([good[0], canonical_json(edited) + "\n", *good[2:]]) == (False, 2)
    # truncating the tail is visible only against a head kept elsewhere
    path.write_text("".join(good[:4]))
    assert verify(path).ok
    head = json.loads(good[4])["hash"]
    assert not verify(path, expected_head=head).ok


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=2048) as log:
        for i in range(20):
            log.append(record(i))
    rotated = sorted(tmp_path.glob("audit.jsonl.*"))
    assert len(rotated) >= 3
    assert all(p.stat().st_size <= 2048 for p in [*rotated, path])
    result = verify(path)
    assert (result.ok, result.records) == (True, 20)
    # a reopened log continues the chain
    with AuditLog(path, max_bytes=2048) as log:
        assert log.append(record(20)).seq == 20
    assert verify(tmp_path).records == 21
    # deleting a whole rotated file is detected
    rotated[1].unlink()
    assert not verify(path).ok


def test_reopen_cuts_an_unacknowledged_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append(record(0))
    with path.open("a") as f:
        f.write('{"seq":1,"half')
    assert not verify(path).ok
    with AuditLog(path) as log:
        assert log.append(record(1)).seq == 1
    assert verify(path).ok


def test_query(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.jsonl", max_bytes=4096) as log:
        for i in range(30):
            log.append(record(i, outcome="deny" if i % 3 == 0 else "allow", user="bob" if i % 2 else "alice"))
        denied_bob = log.query(user="bob", outcome="deny")
        assert [r["request_id"] for r in denied_bob] == ["r27", "r21", "r15", "r9", "r3"]
        assert len(log.query(limit=4)) == 4
        assert [r["request_id"] for r in log.query(since=T0 + timedelta(seconds=28))] == ["r29", "r28"]


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditError, match="check the path"):
        AuditLog(tmp_path / "file" / "audit.jsonl")
    with AuditLog(tmp_path / "a.jsonl") as log, pytest.raises(AuditError, match="timezone-aware"):
        log.append({"time": datetime(2026, 1, 1)})
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(AuditError, match="exactly one audit log"):
        verify(tmp_path)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.data())
def test_any_single_byte_change_is_detected(count: int, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        with AuditLog(path) as log:
            for i in range(count):
                log.append(record(i, user=data.draw(st.text(max_size=8))))
        raw = bytearray(path.read_bytes())
        starts = [0, *[i + 1 for i, b in enumerate(raw) if b == 0x0A][:-1]]
        index = data.draw(st.integers(min_value=0, max_value=count - 1))
        end = starts[index + 1] if index + 1 < count else len(raw)
        offset = data.draw(st.integers(min_value=starts[index], max_value=end - 1))
        raw[offset] = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != raw[offset]))
        path.write_bytes(bytes(raw))
        result = verify(path)
        assert not result.ok
        assert result.first_bad_index == index


def test_the_recorder_writes_records_together_then_syncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an event loop, records wait a moment (WRITE_GATHER_S), are written in one go (the
    same lines as whole records) and synced by the recorder's thread; close() writes what is
    pending; records from other threads go through that thread."""
    import asyncio
    import os
    import threading

    from noops.gate._pep_audit import DecisionRecorder
    from noops.gate.audit import RecordTemplate

    synced: list[str] = []
    real_sync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(threading.current_thread().name),
                                                     real_sync(fd))[1])
    path = tmp_path / "audit.jsonl"
    recorder = DecisionRecorder(AuditLog(path))
    start = (T0 + timedelta(seconds=1)).timestamp()
    ids = ["r0", "0a-ff", 'r"2\n', "R.3_x"]  # the front door's kind, one to escape, other plain

    async def decide() -> list[dict[str, object]]:
        template = RecordTemplate(recorder.record(record(0)), ("time", "request_id"))
        for i in range(1, 4):
            recorder.repeat(template, start + i - 1 + 0.25, ids[i])
        await asyncio.sleep(0)
        assert not path.exists() or path.read_text() == ""  # not at once
        await asyncio.sleep(0.2)
        return lines(path)

    written = asyncio.run(decide())
    assert [(r["request_id"], r["time"]) for r in written] == [
        ("r0", "2026-05-06T10:00:00.000000+00:00"), ("0a-ff", "2026-05-06T10:00:01.250000+00:00"),
        ('r"2\\x0a', "2026-05-06T10:00:02.250000+00:00"), ("R.3_x", "2026-05-06T10:00:03.250000+00:00")]
    whole = AuditLog(tmp_path / "whole.jsonl")
    for i in range(4):
        whole.append({**record(0), "request_id": ids[i],
                      "time": T0 + timedelta(seconds=i, milliseconds=250 if i else 0)})
    whole.close()
    assert path.read_text() == (tmp_path / "whole.jsonl").read_text()
    deadline = time.monotonic() + 5
    while "audit" not in synced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "audit" in synced  # the loop never waited for the disk
    recorder.from_thread(record(4))
    recorder.record(record(5))  # no event loop here: written and synced at once
    recorder.close()
    assert [r["request_id"] for r in lines(path)][4:] in (["r5", "r4"], ["r4", "r5"])
    assert verify(path).ok and verify(path).records == 6
