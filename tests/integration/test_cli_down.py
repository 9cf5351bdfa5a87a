"""`noops down` with a pid file that names another process: that process is left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_stale_pid_file_never_signals_another_process(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "noops.pid").write_text(str(other.pid))  # a reused pid
        for args in (["down"], ["down", "--apps"]):
            (tmp_path / "run" / "noops.pid").write_text(str(other.pid))
            done = subprocess.run([sys.executable, "-m", "noops", "--home", str(tmp_path), *args],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert other.poll() is None  # neither SIGTERM nor SIGUSR1 reached it
            assert not (tmp_path / "run" / "noops.pid").exists()  # the stale file is gone
    finally:
        other.kill()
        other.wait()
