"""What every command shares: settings from flags/env, JSON or rich output, progress logging."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from noops.oci.store import ImageStore
from noops.settings import Settings

__all__ = ["Ctx", "emit", "pass_ctx"]


@dataclass
class Ctx:
    settings: Settings
    json: bool
    verbose: bool
    console: Console

    @property
    def store(self) -> ImageStore:
        return ImageStore(self.settings.home / "images")

    def logger(self) -> Callable[[str], None]:
        """Progress lines on stderr for humans; nothing in --json mode unless --verbose."""
        err = Console(stderr=True, highlight=False)

        def log(message: str) -> None:
            if self.json and not self.verbose:
                return
            if message.startswith("   ") and not self.verbose:
                return  # command output: shown with --verbose, and in errors
            err.print(f"[dim]›[/dim] {escape(message)}", markup=True, soft_wrap=True)

        return log


pass_ctx = click.make_pass_decorator(Ctx)


def make_ctx(home: Path | None, as_json: bool, verbose: bool) -> Ctx:
    settings = Settings(overrides={"home": home})
    return Ctx(settings, as_json, verbose, Console(highlight=False))


def emit(ctx: Ctx, data: Any, human: Callable[[Console], None]) -> None:
    if ctx.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        human(ctx.console)
