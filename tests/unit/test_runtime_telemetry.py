"""Instance telemetry without containers: log lines → OTel log rows (rotation, restart
positions), the OTEL_* environment an instance gets, and the ``[telemetry]`` manifest key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noops.appspec import parse_manifest
from noops.errors import UsageError
from noops.runtime.instances import InstanceSpec, telemetry_env
from noops.runtime.logship import InstanceInfo, LogShipper, parse_line
from noops.runtime.monitor import _Log

APP = "shop"
IID = "shop-web-0123abcd"


def _log(home: Path, max_bytes: int = 10_000_000) -> _Log:
    (home / "logs" / APP).mkdir(parents=True, exist_ok=True)
    return _Log(home / "logs" / APP / f"web-{IID}.log", max_bytes, 5)


def test_json_lines_are_structured_and_linked() -> None:
    row = parse_line("stdout", '{"msg": "paid", "level": "warn", "trace_id": "AB' + "0" * 29
                     + '1", "span_id": "00000000000000ff", "order": {"id": 7}}')
    assert row["Body"] == "paid"
    assert (row["SeverityText"], row["SeverityNumber"]) == ("WARN", 13)
    assert row["TraceId"] == "ab" + "0" * 29 + "1" and row["SpanId"] == "00000000000000ff"
    assert row["LogAttributes"] == {"log.iostream": "stdout", "order": '{"id": 7}'}


def test_pino_levels_and_bad_ids() -> None:
    row = parse_line("stdout", '{"msg": "x", "level": 50, "trace_id": "nothex", "span_id": 5}')
    assert row["SeverityText"] == "ERROR"
    assert row["TraceId"] == "" and row["SpanId"] == ""
    assert row["LogAttributes"] == {"log.iostream": "stdout", "trace_id": "nothex", "span_id": "5"}


def test_plain_lines_keep_their_level_word_and_default_by_stream() -> None:
    assert parse_line("stdout", "hello")["SeverityText"] == "INFO"
    assert parse_line("stderr", "Traceback (most recent call last):")["SeverityText"] == "WARN"
    assert parse_line("stderr", "[2026-01-01 10:00:00] [7] [INFO] Booting")["SeverityText"] == "INFO"
    assert parse_line("stdout", "ERROR:root:boom")["SeverityNumber"] == 17
    assert parse_line("stdout", "{not json}")["Body"] == "{not json}"


@given(st.text(max_size=300), st.sampled_from(["stdout", "stderr", "noops"]))
def test_any_line_parses(text: str, stream: str) -> None:
    row = parse_line(stream, text)
    assert isinstance(row["Body"], str) and 1 <= row["SeverityNumber"] <= 24
    assert row["LogAttributes"]["log.iostream"] == stream


def test_shipping_follows_rotation_and_resumes_without_duplicates(tmp_path: Path) -> None:
    log = _log(tmp_path, max_bytes=400)
    state = tmp_path / "telemetry" / "offsets.json"
    live = {IID: InstanceInfo(APP, "web", 4)}
    shipper = LogShipper(tmp_path / "logs", state, lambda: live)
    for i in range(5):
        log.write("stdout", f"line {i}\n".encode())
    first = shipper.poll()
    assert [r["Body"] for r in first] == [f"line {i}" for i in range(5)]
    assert first[0]["ServiceName"] == APP and first[0]["ResourceAttributes"] == {
        "service.name": APP, "service.instance.id": IID, "noops.instance.id": IID,
        "noops.process": "web", "service.version": "v4"}
    assert first[0]["Timestamp"] > 1_700_000_000 * 10**9
    shipper.commit()
    for i in range(5, 40):  # several rotations between two polls
        log.write("stderr", f"line {i}\n".encode())
    log.fh.write(b"2026-01-01T00:00:00.000Z stdout partial")  # a line being written
    log.fh.flush()
    assert Path(f"{log.path}.3").exists()
    second = shipper.poll()
    assert [r["Body"] for r in second] == [f"line {i}" for i in range(5, 40)]
    # not committed: a new shipper (a restarted daemon) reads the same lines again
    again = LogShipper(tmp_path / "logs", state, lambda: {})
    assert [r["Body"] for r in again.poll()] == [f"line {i}" for i in range(5, 40)]
    shipper.commit()
    log.fh.write(b" end\n")
    log.fh.flush()
    restarted = LogShipper(tmp_path / "logs", state, lambda: {})
    rows = restarted.poll()
    assert [r["Body"] for r in rows] == ["partial end"]
    assert rows[0]["ResourceAttributes"]["service.version"] == "v4"  # remembered
    log.fh.close()


def test_files_that_are_not_instance_logs_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "logs" / APP).mkdir(parents=True)
    (tmp_path / "logs" / APP / "notes.log").write_text("2026-01-01T00:00:00.000Z stdout x\n")
    (tmp_path / "logs" / "frontdoor.log").write_text("x\n")
    assert LogShipper(tmp_path / "logs", tmp_path / "o.json").poll() == []


def test_telemetry_env_fills_in_what_the_user_did_not_set() -> None:
    spec = InstanceSpec(APP, 7, "worker", "sha256:x",
                        env={"OTEL_TRACES_EXPORTER": "none",
                             "OTEL_RESOURCE_ATTRIBUTES": "team=a,service.version=mine"})
    env = telemetry_env(spec, IID, "staging")
    assert env["OTEL_SERVICE_NAME"] == APP
    assert "OTEL_TRACES_EXPORTER" not in env  # the user's value stays
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        "team=a,service.version=mine,deployment.environment.name=staging,"
        f"service.instance.id={IID},noops.instance.id={IID},noops.process=worker")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    off = InstanceSpec(APP, 7, "web", "sha256:x", telemetry=False)
    assert telemetry_env(off, IID, "production") == {"OTEL_SDK_DISABLED": "true"}


def test_manifest_telemetry_key() -> None:
    assert parse_manifest({}).telemetry is True
    assert parse_manifest({"telemetry": {"enabled": False}}).telemetry is False
    with pytest.raises(UsageError, match="true or false"):
        parse_manifest({"telemetry": {"enabled": "false"}})
    with pytest.raises(UsageError, match="unknown keys"):
        parse_manifest({"telemetry": {"sample": 0.5}})
    with pytest.raises(UsageError, match="must be a table"):
        parse_manifest({"telemetry": True})
