"""``make demo``: build every example app with noops, then serve one of them.

Run as ``python -m noops.demo``. Stacks are built on first use (a few minutes once; cached after).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

from noops.build.lifecycle import build_image
from noops.errors import NoopsError
from noops.oci.store import ImageStore
from noops.runtime.local import run_foreground
from noops.settings import Settings

EXAMPLES = ("flask", "fastapi", "express", "go", "static")


def main() -> int:
    console = Console(highlight=False)
    settings = Settings()
    root = Path(__file__).resolve().parents[2] / "examples"
    try:
        for name in EXAMPLES:
            started = time.monotonic()
            console.print(f"[bold]building[/] examples/{name} …")
            report = build_image(settings, root / name, tag=f"noops-example/{name}",
                                 log=lambda m: console.print(Text(f"  {m}", style="dim"))
                                 if not m.startswith("   ") else None)
            reused = sum(1 for layer in report.layers if not layer["rebuilt"])
            console.print(f"  [green]✓[/] {report.name} {report.digest[:19]} "
                          f"({len(report.layers)} layers, {reused} reused, "
                          f"{time.monotonic() - started:.1f}s)")
        console.print("\n[bold]serving[/] noops-example/flask at [bold]http://127.0.0.1:8080/[/]"
                      " — Ctrl-C stops it")
        store = ImageStore(settings.home / "images")
        return run_foreground(settings, store, "noops-example/flask", port=8080)
    except NoopsError as exc:
        console.print(f"[red]Error:[/] {exc}", markup=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
