"""``python -m noops.console``: run the web console as its own process (see :mod:`.serve`)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from noops.console.serve import ConsoleServer
from noops.errors import NoopsError
from noops.settings import Settings

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Get SIGTERM when ``parent`` goes away, even by ``kill -9`` (Linux ``PR_SET_PDEATHSIG``),
    so a daemon that is killed does not leave its console serving; exit now if it is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the call above took effect
        sys.exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noops.console",
        description="The noops web console; it reads the platform API on $NOOPS_HOME/noops.sock.")
    parser.add_argument("--home", type=Path, help="the platform home (default: $NOOPS_HOME)")
    parser.add_argument("--api-socket", type=Path,
                        help="the platform API socket (default: HOME/noops.sock)")
    parser.add_argument("--listen", default="127.0.0.1:8080",
                        help="unix:PATH or HOST:PORT (default 127.0.0.1:8080)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain")
    parser.add_argument("--tls-key", type=Path, help="the key of --tls-cert")
    parser.add_argument("--client-ca", type=Path,
                        help="require a client certificate from this CA (mutual TLS)")
    parser.add_argument("--peer-id", action="append", default=[],
                        help="accept only client certificates naming this SPIFFE ID (repeatable)")
    parser.add_argument("--parent-pid", type=int,
                        help="stop when this process (the daemon that started it) ends")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _die_with(args.parent_pid)
    try:
        home = args.home or Settings(environ=os.environ).home
        server = ConsoleServer(api_socket=args.api_socket or home / "noops.sock",
                               listen=args.listen, tls_cert=args.tls_cert, tls_key=args.tls_key,
                               client_ca=args.client_ca, allowed_peers=tuple(args.peer_id))
        server.run()
    except NoopsError as exc:
        print(f"noops console: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
