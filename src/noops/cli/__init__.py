"""The ``noops`` command line: thin click commands that call one subsystem function and print.

Every command that outputs data takes ``--json``. A :class:`~noops.errors.NoopsError` is printed
as its message and the process exits with its ``exit_code``; no traceback for user errors.
"""

from __future__ import annotations

import sys

import click

from noops.cli import gate as _gate  # noqa: F401 - registers the zero-trust admin commands
from noops.cli import observe as _observe  # noqa: F401 - registers apm and traces
from noops.cli import observe_rules as _observe_rules  # noqa: F401 - probes, alerts, deploys
from noops.cli import platform as _platform  # noqa: F401 - registers the platform commands
from noops.cli.app import cli
from noops.errors import NoopsError

__all__ = ["cli", "main"]


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except NoopsError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
