#!/usr/bin/env python3
"""Benchmark: deploy time, failed requests during rollouts under load, front door vs nginx.

A benchmark, not a test: it asserts nothing about time (it exits non-zero only when something
breaks, or when a request failed during the rollouts). One run:

1. builds two real images of ``examples/flask`` (untimed): ``bench-flask`` and
   ``bench-flask:v2``, from copies whose ``VERSION`` line differs and that carry a
   ``noops.toml`` with fast health checks and ``drain_s`` (``--drain-s``, 2 s);
2. starts the platform in its own home (``--home``, ``/var/lib/noops-bench``) with
   ``noops up -d`` and the front door on a free port;
3. seeds the app from the v1 source folder (untimed), which sets the release spec that the
   image deploys inherit (``noops deploy IMAGE`` reuses the current release's noops.toml);
4. runs a bounded load client (~``--rate`` req/s over ``--workers`` keep-alive HTTPS
   connections trusting ``$NOOPS_HOME/tls/localhost.crt``, ``GET /version`` with
   ``Host: APP.localhost``) through ``--deploys`` image deploys alternating v2, v1, v2...
   For each deploy it notes the CLI's wall time (it returns once the old instance is drained
   and stopped) and the time until the first response of the new version through the front
   door;
5. loads the front door and an nginx of its own (one worker, same certificate, ``upstream``
   with ``keepalive`` to the same instance Unix socket, read from ``run/routes.json``) with
   ``wrk``, first with the Flask app as the upstream, then with the static example (Go
   static server) to show the proxies' own cost;
6. stops everything it started: ``noops down --apps``, nginx, the temp dirs.

Usage (as root, after ``make deps``; Debian packages ``nginx`` and ``wrk``)::

    python bench/deploy.py [--deploys 5] [--drain-s 2] [--duration 10] [--no-static] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TARGET_SERVING_S = 3.0

FAST_TOML = """\
[health]
path = "/healthz"
startup = {{ period_s = 0.2, timeout_s = 2, failures = 150 }}
readiness = {{ period_s = 0.5, timeout_s = 1, failures = 2 }}
liveness = {{ period_s = 1, timeout_s = 2, failures = 3 }}

[deploy]
grace_s = 5
drain_s = {drain_s:g}
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- the platform ----------------------------------------------------------------------------
class Platform:
    """``noops`` commands against one home and one front-door port."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.env = dict(os.environ, NOOPS_HOME=str(home), NOOPS_FRONTDOOR_PORT=str(port))
        self.env.pop("SOURCE_DATE_EPOCH", None)

    def noops(self, *args: str, check: bool = True,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "noops", "--home", str(self.home), *args],
                                capture_output=True, text=True, env=self.env, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise SystemExit(f"noops {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
        return result

    @property
    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.home / "tls" / "localhost.crt"))

    def routes(self) -> dict[str, Any]:
        return dict(json.loads((self.home / "run" / "routes.json").read_text()))

    def endpoint(self, app: str) -> dict[str, Any]:
        """The one ready, not draining endpoint of ``app`` in the routes file."""
        eps = [e for e in self.routes()["apps"][app]["endpoints"]
               if e.get("ready") and not e.get("draining")]
        if len(eps) != 1:
            raise SystemExit(f"expected one ready endpoint for {app}, found {eps}")
        return dict(eps[0])

    def wait_version(self, app: str, version: str, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        last = ""
        with httpx.Client(verify=self.ca, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    resp = client.get(f"https://127.0.0.1:{self.port}/version",
                                      headers={"Host": f"{app}.localhost"})
                    last = f"{resp.status_code} {resp.text.strip()[:60]}"
                    if resp.status_code == 200 and resp.text.strip() == version:
                        return
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.1)
        raise SystemExit(f"{app} does not serve version {version} through the front door: {last}")

    def wait_status(self, app: str, path: str = "/", timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(verify=self.ca, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"https://127.0.0.1:{self.port}{path}",
                                  headers={"Host": f"{app}.localhost"}).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise SystemExit(f"{app} does not answer 200 on {path} through the front door")


def ensure_stacks(plat: Platform) -> None:
    names = {i["name"] for i in json.loads(plat.noops("images", "--json").stdout)}
    for stack in ("python", "static"):
        if not {f"noops/build-{stack}:stable", f"noops/run-{stack}:stable"} <= names:
            log(f"stack {stack} missing in {plat.home}: building it (untimed, a few minutes)")
            plat.noops("stack", "build", stack, timeout=3600)


def app_copy(workdir: Path, example: str, name: str, toml: str,
             version: str | None = None) -> Path:
    dest = workdir / name
    shutil.copytree(EXAMPLES / example, dest)
    (dest / "noops.toml").write_text(toml)
    if version is not None:
        src = (dest / "app.py").read_text()
        if 'VERSION = "1.0.0"' not in src:
            raise SystemExit("examples/flask/app.py has no VERSION = \"1.0.0\" line to edit")
        (dest / "app.py").write_text(src.replace('VERSION = "1.0.0"', f'VERSION = "{version}"'))
    return dest


# -- the load client -------------------------------------------------------------------------
@dataclass
class Sample:
    started: float
    ended: float
    version: str | None  # None: failed
    error: str = ""


@dataclass
class Load:
    """~``rate`` req/s from ``workers`` keep-alive HTTPS clients, in a thread of its own.

    Bounded: it stops on :meth:`stop`, or by itself after ``max_s`` seconds.
    """

    port: int
    host: str
    ca: ssl.SSLContext
    rate: float = 200.0
    workers: int = 10
    max_s: float = 600.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True,
                                        name="load")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def _run(self) -> None:
        import httpx

        interval = self.workers / self.rate
        deadline = time.monotonic() + self.max_s
        url = f"https://127.0.0.1:{self.port}/version"

        async def worker(offset: float) -> None:
            await asyncio.sleep(offset)
            async with httpx.AsyncClient(verify=self.ca, timeout=10) as client:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    t0 = time.monotonic()
                    try:
                        resp = await client.get(url, headers={"Host": self.host})
                        t1 = time.monotonic()
                        if resp.status_code == 200:
                            self.samples.append(Sample(t0, t1, resp.text.strip()))
                        else:
                            self.samples.append(Sample(t0, t1, None,
                                                       f"{resp.status_code} {resp.text[:80]!r}"))
                    except httpx.HTTPError as exc:
                        self.samples.append(Sample(t0, time.monotonic(), None, repr(exc)[:200]))
                    await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

        await asyncio.gather(*(worker(i * interval / self.workers) for i in range(self.workers)))


# -- deploys ---------------------------------------------------------------------------------
@dataclass
class Deploy:
    image: str
    version: str
    cli_s: float
    server_s: float  # the daemon's own figure ("seconds" of the API answer)
    serving_s: float | None  # until the first response of the new version through the front door
    last_old_s: float | None  # until the last response of the old version ended
    failed: int


def run_deploys(plat: Platform, app: str, images: list[tuple[str, str]], n: int,
                load: Load, gap_s: float) -> list[Deploy]:
    results: list[Deploy] = []
    for i in range(n):
        image, version = images[(i + 1) % len(images)]
        old_version = images[i % len(images)][1]
        failed_before = sum(1 for s in load.samples if s.version is None)
        t0 = time.monotonic()
        out = plat.noops("deploy", image, "--app", app, "--json")
        cli_s = time.monotonic() - t0
        server_s = float(json.loads(out.stdout)["seconds"])
        # the CLI returns when the new release is live: wait (bounded) for the load to see it
        deadline = time.monotonic() + 10
        serving = None
        while serving is None and time.monotonic() < deadline:
            new = [s.ended for s in list(load.samples) if s.version == version and s.started >= t0]
            serving = min(new) - t0 if new else None
            if serving is None:
                time.sleep(0.05)
        old = [s.ended for s in list(load.samples) if s.version == old_version and s.started >= t0]
        time.sleep(gap_s)
        failed = sum(1 for s in load.samples if s.version is None) - failed_before
        d = Deploy(image, version, cli_s, server_s, serving, (max(old) - t0) if old else None,
                   failed)
        results.append(d)
        log(f"deploy {i + 1}/{n} {image} → {version}: serving after "
            f"{d.serving_s if d.serving_s is None else f'{d.serving_s:.2f}'} s, CLI {cli_s:.2f} s "
            f"(daemon {server_s:.2f} s), last old response {d.last_old_s and round(d.last_old_s, 2)}"
            f" s, failed {failed}")
    return results


def cli_startup_s(plat: Platform, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        plat.noops("apps", "list", "--json")
        times.append(time.monotonic() - t0)
    return statistics.median(times)


# -- proxies ---------------------------------------------------------------------------------
class Nginx:
    """An nginx of our own: one worker, HTTPS with noops' localhost certificate, one server
    block per upstream (chosen by ``server_name``), each ``proxy_pass`` to a Unix socket.

    Instance sockets speak only mTLS with the gateway's SPIFFE ID, so nginx dials them with a
    gateway SVID from the platform CA, as the front door does. It cannot pin the instance's
    SPIFFE ID (``proxy_ssl_verify`` checks DNS names, and SVIDs have none), so it skips that
    check: the same TLS work, one comparison less than the front door."""

    def __init__(self, home: Path, workdir: Path) -> None:
        self.home, self.work = home, workdir / "nginx"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, upstreams: dict[str, str]) -> None:
        """``upstreams``: host → Unix socket path."""
        self.work.mkdir(parents=True, exist_ok=True)
        from noops.gate.mtls import load_or_create_ca

        ca = load_or_create_ca(self.home / "gate" / "ca")
        gw_cert, gw_key = ca.issue_gateway_identity(ttl_s=24 * 3600).write(self.work, "gateway")
        ups, servers = [], []
        for i, (host, sock) in enumerate(sorted(upstreams.items())):
            name = f"app{i}"
            ups.append(textwrap.dedent(f"""\
                upstream {name} {{
                    server unix:{sock};
                    keepalive 64;
                    keepalive_timeout 1500ms;
                }}
                """))
            servers.append(textwrap.dedent(f"""\
                server {{
                    listen 127.0.0.1:{self.port} ssl{' default_server' if i == 0 else ''};
                    server_name {host};
                    ssl_certificate {self.home / 'tls' / 'localhost.crt'};
                    ssl_certificate_key {self.home / 'tls' / 'localhost.key'};
                    location / {{
                        proxy_pass https://{name};
                        proxy_ssl_certificate {gw_cert};
                        proxy_ssl_certificate_key {gw_key};
                        proxy_ssl_protocols TLSv1.3;
                        proxy_ssl_session_reuse on;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Host $host;
                        proxy_set_header X-Forwarded-For $remote_addr;
                        proxy_set_header X-Forwarded-Proto https;
                        proxy_set_header X-Forwarded-Host $host;
                    }}
                }}
                """))
        conf = textwrap.dedent(f"""\
            user root;
            worker_processes 1;
            pid {self.work}/nginx.pid;
            error_log {self.work}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {self.work}/body;
                proxy_temp_path {self.work}/proxy;
                fastcgi_temp_path {self.work}/fastcgi;
                uwsgi_temp_path {self.work}/uwsgi;
                scgi_temp_path {self.work}/scgi;
                keepalive_timeout 75s;
                keepalive_requests 1000000;
                ssl_protocols TLSv1.2 TLSv1.3;
            """) + "".join(textwrap.indent(u, "    ") for u in ups) + \
            "".join(textwrap.indent(s, "    ") for s in servers) + "}\n"
        (self.work / "nginx.conf").write_text(conf)
        test = subprocess.run(["nginx", "-t", "-p", str(self.work), "-e",
                               str(self.work / "error.log"), "-c", str(self.work / "nginx.conf")],
                              capture_output=True, text=True, check=False)
        if test.returncode != 0:
            raise SystemExit(f"nginx -t failed:\n{test.stderr}")
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.work), "-e", str(self.work / "error.log"),
             "-c", str(self.work / "nginx.conf"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"nginx did not start; see {self.work / 'error.log'}") from None
                time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def busy_ticks() -> int:
    """CPU ticks the whole machine spent busy (not idle, not waiting for I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def upstream_pids(endpoint: dict[str, Any]) -> dict[str, list[int]]:
    """The instance's monitor (the Unix-socket bridge) and the app's processes."""
    idir = Path(endpoint["socket_path"]).parent
    status = json.loads((idir / "status.json").read_text())
    monitor = int(status["monitor_pid"])
    procs = children(monitor)
    names = {p: _comm(p) for p in procs}
    app = [p for p, n in names.items() if n not in ("runc", "runc:[2:INIT]")]
    return {"monitor": [monitor], "app": app}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, host: str, path: str, threads: int, connections: int,
        duration_s: float) -> dict[str, Any]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency",
           "-H", f"Host: {host}", f"https://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=duration_s + 60)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    lat = {q: _duration(v) for q, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    total = re.search(r"(\d+) requests in", text)
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"),
            "requests": int(total.group(1)) if total else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
            "cmd": " ".join(cmd), "raw": text}


def measure_proxy(label: str, port: int, host: str, path: str, args: argparse.Namespace,
                  proxy_pids: list[int], up: dict[str, list[int]]) -> dict[str, Any]:
    wrk(port, host, path, args.threads, args.connections, args.warmup)  # warm-up, not kept
    groups = {"proxy": proxy_pids, **up}
    before = {k: cpu_ticks(v) for k, v in groups.items()}
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = busy_ticks()
    t0 = time.monotonic()
    res = wrk(port, host, path, args.threads, args.connections, args.duration)
    wall = time.monotonic() - t0
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    hz = os.sysconf("SC_CLK_TCK")
    used = {k: (cpu_ticks(v) - before[k]) / hz for k, v in groups.items()}
    used["wrk"] = (kids_after.ru_utime - kids.ru_utime) + (kids_after.ru_stime - kids.ru_stime)
    # everything else on the machine (other jobs, the kernel's softirqs, this script)
    used["other"] = max(0.0, (busy_ticks() - busy0) / hz - sum(used.values()))
    res["cpu"] = {k: round(100 * v / wall) for k, v in used.items()}
    res["cpu_us_per_request"] = {k: round(v * 1e6 / res["requests"]) if res["requests"] else None
                                 for k, v in used.items()}
    res["processes"] = {k: [f"{p} {_comm(p)}" for p in v] for k, v in groups.items()}
    res["cpu_total"] = sum(res["cpu"].values())
    res["cpu_us_per_request"].pop("other")
    res["label"] = label
    log(f"{label}: {res['rps']:.0f} req/s, p50 {ms(res['p50'])}, p99 {ms(res['p99'])}, "
        f"errors {res['non_2xx'] + res['socket_errors']}, CPU% {res['cpu']}")
    return res


def compare(name: str, plat: Platform, nginx: Nginx, app: str, path: str,
            args: argparse.Namespace) -> dict[str, Any]:
    ep = plat.endpoint(app)
    host = f"{app}.localhost"
    fd_pid = int((plat.home / "run" / "frontdoor.pid").read_text())
    runs: dict[str, list[dict[str, Any]]] = {"noops": [], "nginx": []}
    for r in range(args.proxy_runs):
        order = ["noops", "nginx"] if r % 2 == 0 else ["nginx", "noops"]
        for who in order:
            up = upstream_pids(plat.endpoint(app))
            if who == "noops":
                runs[who].append(measure_proxy(f"{name} noops", plat.port, host, path, args,
                                               [fd_pid], up))
            else:
                runs[who].append(measure_proxy(f"{name} nginx", nginx.port, host, path, args,
                                               nginx.worker_pids(), up))
    best = {who: sorted(rs, key=lambda x: x["rps"])[len(rs) // 2] for who, rs in runs.items()}
    if plat.endpoint(app)["id"] != ep["id"]:
        log(f"warning: {app}'s endpoint changed during the proxy runs")
    return {"upstream": name, "socket": ep["socket_path"], "path": path, **best,
            "ratio": best["noops"]["rps"] / best["nginx"]["rps"] if best["nginx"]["rps"] else None}


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--home", type=Path, default=Path("/var/lib/noops-bench"))
    ap.add_argument("--app", default="benchdeploy")
    ap.add_argument("--deploys", type=int, default=5)
    ap.add_argument("--drain-s", type=float, default=2.0)
    ap.add_argument("--gap-s", type=float, default=1.0, help="pause after each deploy")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--duration", type=float, default=10.0, help="wrk seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up seconds (not kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--proxy-runs", type=int, default=1, help="wrk rounds per proxy (median)")
    ap.add_argument("--no-static", action="store_true", help="skip the static-upstream runs")
    ap.add_argument("--no-proxy", action="store_true", help="skip the proxy comparison")
    ap.add_argument("--keep", action="store_true", help="leave the platform up at the end")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if args.deploys < 1:
        ap.error("--deploys must be at least 1")
    for tool in ("nginx", "wrk") if not args.no_proxy else ():
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `make deps` installs it (Debian package {tool})")

    plat = Platform(args.home, free_port())
    workdir = Path(tempfile.mkdtemp(prefix="noops-bench-deploy-"))
    nginx: Nginx | None = None
    results: dict[str, Any] = {"home": str(args.home), "load_before": loadavg()}
    exit_code = 0
    try:
        log(f"home {args.home}, front door on 127.0.0.1:{plat.port}, load {loadavg()}")
        args.home.mkdir(parents=True, exist_ok=True)
        ensure_stacks(plat)
        toml = FAST_TOML.format(drain_s=args.drain_s)
        v1 = app_copy(workdir, "flask", "flask-v1", toml, "1.0.0")
        v2 = app_copy(workdir, "flask", "flask-v2", toml, "2.0.0")
        t0 = time.monotonic()
        plat.noops("build", str(v1), "-t", "bench-flask")
        plat.noops("build", str(v2), "-t", "bench-flask:v2")
        log(f"built bench-flask and bench-flask:v2 in {time.monotonic() - t0:.1f} s (untimed)")

        plat.noops("down", "--apps", check=False)  # a leftover daemon of this home, if any
        plat.noops("up", "-d")
        app = args.app
        log(f"seeding {app} from {v1} (sets the fast noops.toml; untimed)")
        plat.noops("deploy", str(v1), "--app", app)
        plat.wait_version(app, "1.0.0")
        results["cli_startup_s"] = cli_startup_s(plat)

        # 1 + 2: deploys under load
        load = Load(plat.port, f"{app}.localhost", plat.ca, rate=args.rate, workers=args.workers,
                    max_s=120 + args.deploys * 60)
        load.start()
        time.sleep(1.5)
        images = [("bench-flask", "1.0.0"), ("bench-flask:v2", "2.0.0")]
        load_t0 = time.monotonic()
        try:
            deploys = run_deploys(plat, app, images, args.deploys, load, args.gap_s)
        finally:
            load.stop()
        load_s = time.monotonic() - load_t0 + 1.5
        samples = list(load.samples)
        lat = [s.ended - s.started for s in samples if s.version is not None]
        failures = [s for s in samples if s.version is None]
        serving = [d.serving_s for d in deploys if d.serving_s is not None]
        results["deploys"] = [d.__dict__ for d in deploys]
        results["deploy"] = {
            "serving_median_s": statistics.median(serving) if serving else None,
            "cli_median_s": statistics.median(d.cli_s for d in deploys),
            "daemon_median_s": statistics.median(d.server_s for d in deploys),
            "drain_s": args.drain_s, "target_s": TARGET_SERVING_S,
            "serving_missing": len(deploys) - len(serving)}
        results["load"] = {"requests": len(samples), "failed": len(failures),
                           "seconds": load_s, "rate": len(samples) / load_s,
                           "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99),
                           "max_s": max(lat) if lat else None,
                           "versions": sorted({s.version for s in samples if s.version}),
                           "first_failures": [f"{s.started - load_t0:+.2f}s {s.error}"
                                              for s in failures[:5]]}
        if failures:
            exit_code = 1

        # 3: proxies
        if not args.no_proxy:
            upstreams = {f"{app}.localhost": plat.endpoint(app)["socket_path"]}
            static_app = f"{app}static"
            if not args.no_static:
                static = app_copy(workdir, "static", "static-site", toml)
                log(f"deploying the static example as {static_app} (untimed)")
                plat.noops("deploy", str(static), "--app", static_app)
                plat.wait_status(static_app, "/")
                upstreams[f"{static_app}.localhost"] = plat.endpoint(static_app)["socket_path"]
            nginx = Nginx(args.home, workdir)
            nginx.start(upstreams)
            log(f"nginx on 127.0.0.1:{nginx.port} → {upstreams}")
            results["proxy"] = [compare("flask", plat, nginx, app, "/", args)]
            if not args.no_static:
                results["proxy"].append(compare("static", plat, nginx, static_app, "/", args))
        results["load_after"] = loadavg()
    finally:
        if nginx is not None:
            nginx.stop()
        if not args.keep:
            plat.noops("down", "--apps", check=False)
        shutil.rmtree(workdir, ignore_errors=True)

    report(results, args)
    if args.json:
        for entry in results.get("proxy", []):
            for who in ("noops", "nginx"):
                entry[who].pop("raw", None)
        print(json.dumps(results, indent=2, default=str))
    return exit_code


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"noops deploy benchmark  (home {r['home']}; load average {r['load_before']} before, "
          f"{r.get('load_after', '?')} after)")
    print()
    print(f"{'#':>2}  {'image':<16} {'version':<8} {'serving':>9} {'last old':>9} "
          f"{'CLI':>8} {'daemon':>8} {'failed':>6}")
    for i, d in enumerate(r["deploys"], 1):
        serving = f"{d['serving_s']:.2f} s" if d["serving_s"] is not None else "never"
        last_old = f"{d['last_old_s']:.2f} s" if d["last_old_s"] is not None else "-"
        print(f"{i:>2}  {d['image']:<16} {d['version']:<8} {serving:>9} {last_old:>9} "
              f"{d['cli_s']:>6.2f} s {d['server_s']:>6.2f} s {d['failed']:>6}")
    print("  serving: first response of the new version through the front door; last old: end "
          "of the last response of the old version;")
    print(f"  CLI: `noops deploy IMAGE` wall time (CLI start-up alone ≈ "
          f"{r['cli_startup_s']:.2f} s); daemon: the API's own figure")
    L = r["load"]
    print(f"  load: {L['requests']} requests in {L['seconds']:.1f} s ({L['rate']:.0f} req/s), "
          f"versions seen {L['versions']}, slowest {ms(L['max_s'] or 0)}")
    for line in L["first_failures"]:
        print(f"  failure: {line}")
    for entry in r.get("proxy", []):
        print()
        print(f"proxy, {entry['upstream']} upstream (GET {entry['path']}, wrk "
              f"-t{args.threads} -c{args.connections} -d{args.duration:g}s, HTTPS; same instance "
              f"socket {entry['socket']})")
        for who in ("noops", "nginx"):
            w = entry[who]
            cpu = ", ".join(f"{k} {v}%" + (f" ({w['cpu_us_per_request'][k]} µs/req)"
                                                 if k in w["cpu_us_per_request"] else "")
                            for k, v in w["cpu"].items())
            print(f"  {who:<6} {w['rps']:>8.0f} req/s  p50 {ms(w['p50']):>9}  p99 "
                  f"{ms(w['p99']):>9}  errors {w['non_2xx'] + w['socket_errors']}")
            print(f"         CPU: {cpu}")
    if r.get("proxy"):
        print("  CPU: % of one core during the timed wrk run (2 cores = 200%); monitor = the "
              "instance's Unix-socket bridge, shared by both proxies;\n"
              "       other = the rest of the machine (other jobs, kernel, this script)")
    print()
    D = r["deploy"]
    serving = D["serving_median_s"]
    print(f"deploy to serving: median {serving:.2f} s (target <= {D['target_s']:g} s)"
          if serving is not None else "deploy to serving: never seen")
    print(f"deploy command: median {D['cli_median_s']:.2f} s (includes {D['drain_s']:g} s drain; "
          f"{D['cli_median_s'] - D['drain_s']:.2f} s without it); daemon's own figure: median "
          f"{D['daemon_median_s']:.2f} s")
    print(f"requests during {len(r['deploys'])} rollouts: {L['requests']}, failed: {L['failed']}, "
          f"p50 {ms(L['p50_s'])}, p99 {ms(L['p99_s'])}")
    for entry in r.get("proxy", []):
        n, x = entry["noops"], entry["nginx"]
        ratio = f"{entry['ratio']:.2f}" if entry["ratio"] is not None else "-"
        print(f"proxy ({entry['upstream']} upstream): noops {n['rps']:.0f} req/s, nginx "
              f"{x['rps']:.0f} req/s, ratio {ratio}; p50 {ms(n['p50'])} vs {ms(x['p50'])}, "
              f"p99 {ms(n['p99'])} vs {ms(x['p99'])}")


if __name__ == "__main__":
    sys.exit(main())
