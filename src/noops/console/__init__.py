"""The web console: one page per app for the whole lifecycle, rendered on the server.

It reads only the daemon's public HTTP API (:class:`ApiClient`, Unix socket) and runs as its own
process (``python -m noops.console``, see :mod:`noops.console.serve`). Front-end assets (htmx,
uPlot) are vendored under ``static/vendor`` with their licences; no Node toolchain is needed.
"""

from noops.console.app import make_console
from noops.console.client import ApiClient, ApiError, ApiUnavailableError
from noops.console.serve import ConsoleServer

__all__ = ["ApiClient", "ApiError", "ApiUnavailableError", "ConsoleServer", "make_console"]
