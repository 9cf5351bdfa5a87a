"""The zero-trust admin commands, end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import load_pem_x509_certificates


def _noops(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "noops", "--home", str(home), *args],
                          input=stdin, capture_output=True, text=True, check=False)


def test_ca_users_devices_and_audit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bundle = _noops(home, "ca", "export")
    assert bundle.returncode == 0, bundle.stderr
    certs = load_pem_x509_certificates(bundle.stdout.encode())
    assert len(certs) == 2  # root and intermediate
    assert _noops(home, "ca", "export").stdout == bundle.stdout  # created once, then reused

    short = _noops(home, "users", "add", "alice", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "12 characters" in short.stderr
    added = _noops(home, "users", "add", "alice", "-g", "admin", "--password-stdin", "--json",
                   stdin="correct horse battery\n")
    assert added.returncode == 0, added.stderr
    assert '"admin"' in added.stdout
    assert "correct horse" not in (home / "gate" / "identity.db").read_bytes().decode(errors="replace")
    assert _noops(home, "users", "lock", "alice").returncode == 0

    p12 = tmp_path / "laptop.p12"
    enrolled = _noops(home, "device", "enroll", "laptop", "--user", "alice", "-o", str(p12),
                      "--password-stdin", stdin="bundle-pass-123\n")
    assert enrolled.returncode == 0, enrolled.stderr
    assert oct(p12.stat().st_mode & 0o777) == "0o600"
    key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), b"bundle-pass-123")
    assert key is not None and cert is not None
    revoked = _noops(home, "device", "revoke", "laptop", "--user", "alice")
    assert revoked.returncode == 0 and "revoked 1" in revoked.stdout

    checked = _noops(home, "audit", "--verify", "--json")
    assert checked.returncode == 0 and '"ok": true' in checked.stdout


def test_audit_query_reads_without_touching_the_log(tmp_path: Path) -> None:
    """`noops audit` filters newest first and never cuts the line the front door is writing."""
    from datetime import UTC, datetime

    from noops.gate.audit import AuditLog

    home = tmp_path / "home"
    path = home / "gate" / "audit" / "decisions.jsonl"
    with AuditLog(path) as log:
        for i, (user, outcome) in enumerate([("alice", "deny"), ("bob", "deny"), ("alice", "allow"),
                                             ("alice", "deny")]):
            log.append({"time": datetime.now(UTC), "request_id": f"r{i}", "user": user,
                        "outcome": outcome, "score": 10 * i})
    with path.open("ab") as fh:
        fh.write(b'{"seq":4,"outcome":"al')   # a write in progress
    before = path.read_bytes()
    found = _noops(home, "audit", "--user", "alice", "--outcome", "deny", "--json")
    assert found.returncode == 0, found.stderr
    assert [r["request_id"] for r in json.loads(found.stdout)] == ["r3", "r0"]
    newest = _noops(home, "audit", "-n", "1", "--json")
    assert [r["request_id"] for r in json.loads(newest.stdout)] == ["r3"]
    assert path.read_bytes() == before
