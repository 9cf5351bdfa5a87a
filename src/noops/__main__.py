"""``python -m noops``: the same as the ``noops`` command."""

from noops.cli import main

main()
