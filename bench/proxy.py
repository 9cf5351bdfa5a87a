#!/usr/bin/env python3
"""Benchmark: the noops front door vs nginx as a reverse proxy (a benchmark, not a test).

Both proxies listen on 127.0.0.1 (plain HTTP, or HTTPS with ``--tls``), route
``Host: bench.localhost`` to the same upstream -- a separate nginx (one worker) answering
``200 hello`` on a Unix socket -- over kept-alive upstream connections, and set the same
forwarding headers (X-Forwarded-For/-Proto/-Host, X-Request-Id, Via). nginx runs one worker
process; the front door one Python process on uvloop. ``wrk`` loads each for ``--duration``
seconds after a short warm-up, one after the other (``--runs`` rounds, the median kept).
Everything runs on the same machine, so the load generator, the proxy and the upstream share
the CPUs.

Usage (Debian packages ``nginx`` and ``wrk``)::

    python bench/proxy.py [--duration 10] [--connections 50] [--threads 2] [--runs 1] [--tls] [--json]

Besides req/s and latency it prints each proxy's CPU time per request (user+system of the nginx
worker / the front door process), the figure that does not depend on who else shares the CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HOST = "bench.localhost"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def wait_path(path: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.05)


def nginx_conf(workdir: Path, server_block: str) -> str:
    user = pwd.getpwuid(os.getuid()).pw_name
    return textwrap.dedent(f"""\
        user {user};
        worker_processes 1;
        pid {workdir}/nginx.pid;
        error_log {workdir}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {workdir}/body;
            proxy_temp_path {workdir}/proxy;
            fastcgi_temp_path {workdir}/fastcgi;
            uwsgi_temp_path {workdir}/uwsgi;
            scgi_temp_path {workdir}/scgi;
            keepalive_requests 1000000;
            keepalive_timeout 65s;
        {textwrap.indent(server_block, "    ")}
        }}
        """)


def start_nginx(workdir: Path, server_block: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, server_block))
    return subprocess.Popen(["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def upstream_block(sock: Path) -> str:
    return textwrap.dedent(f"""\
        server {{
            listen unix:{sock};
            location / {{ default_type text/plain; return 200 "hello\\n"; }}
        }}""")


def proxy_block(sock: Path, port: int, tls: tuple[Path, Path] | None) -> str:
    ssl = (f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; ssl_protocols TLSv1.2 TLSv1.3;"
           if tls else "")
    return textwrap.dedent(f"""\
        upstream app {{ server unix:{sock}; keepalive 64; keepalive_requests 1000000; }}
        server {{
            listen 127.0.0.1:{port} {"ssl " if tls else ""}reuseport backlog=1024;
            {ssl}
            location / {{
                proxy_pass http://app;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
                proxy_set_header X-Forwarded-For $remote_addr;
                proxy_set_header X-Forwarded-Proto $scheme;
                proxy_set_header X-Forwarded-Host $host;
                proxy_set_header X-Request-Id $request_id;
                proxy_set_header Via "1.1 nginx";
                proxy_buffering on;
            }}
        }}""")


FRONT_DOOR = textwrap.dedent("""\
    import sys
    from noops.gate import Endpoint, StaticEndpointRegistry, run_forever, server_context
    registry = StaticEndpointRegistry()
    registry.set("bench", [sys.argv[2]], [Endpoint("bench/0", "bench", sys.argv[1])])
    tls = server_context(sys.argv[4], sys.argv[5]) if len(sys.argv) > 4 else None
    run_forever(registry, host="127.0.0.1", port=int(sys.argv[3]), tls=tls, drain_s=1.0)
    """)

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result = {"rps": rps}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float((int(errors.group(1)) if errors else 0)
                             + (sum(int(g) for g in sock_err.groups()) if sock_err else 0))
    return result


def wrk(port: int, seconds: float, threads: int, connections: int, scheme: str) -> dict[str, float]:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                          "-H", f"Host: {HOST}", f"{scheme}://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU time of ``pids`` and their children processes (nginx workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        for p in [pid, *children(pid)]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per proxy and run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of untimed load first")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="rounds; the median is reported")
    ap.add_argument("--tls", action="store_true",
                    help="HTTPS at both proxies (TLS 1.3, the generated ECDSA P-256 localhost certificate)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y {tool}")

    work = Path(tempfile.mkdtemp(prefix="noops-bench-proxy-"))
    os.chmod(work, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_sock = work / "up.sock"
        procs.append(start_nginx(work / "upstream", upstream_block(up_sock)))
        wait_path(up_sock)
        nginx_port, door_port = free_port(), free_port()
        tls = None
        if args.tls:
            from noops.gate import localhost_certificate

            tls = localhost_certificate(work / "tls")
            os.chmod(work / "tls", 0o755)
            os.chmod(tls[1], 0o644)  # the nginx worker runs as another user
        procs.append(start_nginx(work / "proxy", proxy_block(up_sock, nginx_port, tls)))
        door_args = [str(up_sock), HOST, str(door_port), *(str(p) for p in tls or ())]
        procs.append(subprocess.Popen([sys.executable, "-c", FRONT_DOOR, *door_args]))
        wait_port(nginx_port)
        wait_port(door_port)
        scheme = "https" if args.tls else "http"
        results: dict[str, list[dict[str, float]]] = {"nginx": [], "noops": []}
        for _ in range(args.runs):
            for name, port in (("nginx", nginx_port), ("noops", door_port)):
                if args.warmup:
                    wrk(port, args.warmup, args.threads, args.connections, scheme)
                pid = procs[1].pid if name == "nginx" else procs[2].pid
                before = cpu_seconds([pid])
                result = wrk(port, args.duration, args.threads, args.connections, scheme)
                used = cpu_seconds([pid]) - before
                result["cpu_us_per_req"] = used / (result["rps"] * args.duration) * 1e6
                results[name].append(result)
                print(f"{name}: {results[name][-1]}", file=sys.stderr)
        summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                   for name, runs in results.items()}
        ratio = summary["noops"]["rps"] / summary["nginx"]["rps"]
        if args.json:
            print(json.dumps({"results": summary, "ratio": ratio, "load": os.getloadavg()}))
        else:
            print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, keep-alive, "
                  f"{'HTTPS (TLS 1.3)' if args.tls else 'plain HTTP'}, "
                  f"Unix-socket upstream (nginx return 200), {args.runs} run(s), median")
            print(f"{'proxy':<8}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'CPU us/req':>12}{'errors':>8}")
            for name, r in summary.items():
                print(f"{name:<8}{r['rps']:>12.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                      f"{r['cpu_us_per_req']:>12.1f}{r['errors']:>8.0f}")
            print(f"ratio noops/nginx (req/s): {ratio:.2f}")
            print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
