#!/usr/bin/env python3
"""Benchmark: the noops gateway with every check on vs nginx doing mTLS (a benchmark, not a test).

Both gateways run in the same run, one worker each, on 127.0.0.1, in front of **one shared
upstream**: an nginx (one worker) on a Unix socket answering ``200 ok`` over TLS 1.3, requiring
a client certificate from the built-in CA and presenting the SVID of
``spiffe://noops.local/app/bench/web`` (plus the DNS name ``web.bench.noops.local``, because
nginx can only check DNS names, never a SPIFFE URI). Every certificate comes from noops' own CA
(:mod:`noops.gate.pki`), ECDSA P-256.

* **nginx**: TLS 1.3 on 127.0.0.1, ``ssl_verify_client on`` (the device certificate must chain to
  the CA), ``proxy_pass https://`` to the upstream with the gateway SVID as client certificate,
  ``proxy_ssl_verify on`` against the CA bundle, kept-alive upstream pool.
* **noops**: the front door process (``python -m noops.gate.frontdoor --home H --port P``) with a
  temporary ``NOOPS_HOME``: the CA in ``H/gate/ca``, a user with a password+TOTP session in
  ``H/gate/identity.db``, a policy for ``bench.localhost`` (authenticated, device certificate
  required, ``min_score = 50``) in ``H/gate/policy``, the audit log in ``H/gate/audit``, and the
  route in ``H/run/routes.json`` pinning the upstream's SPIFFE ID (see bench/README.md for why
  ``trust.toml`` raises the normal request rate).

The load generator is ``wrk`` (HTTP/1.1 keep-alive), the same tool and settings for both. wrk
has no client-certificate option (nor has h2load), so the script compiles a ~40-line
``LD_PRELOAD`` shim (cc) that loads the device certificate and key into wrk's ``SSL_CTX`` and
sets the SNI to ``bench.localhost``; it costs nothing per request (handshakes happen once per
connection). Each request also carries the session cookie ``__Host-noops_session``. A third row
runs the same wrk straight at the upstream: the load tool's ceiling on this machine.

Before timing, each gateway must return the upstream's body to a request with the device
certificate and the session; requests without the certificate, without the session, and to
``/echo-assertion`` (the upstream echoes ``X-Noops-Assertion``) show what it enforces. The
``noops enforced`` line is built from those answers and from the front door's audit log, not
from configuration. A front door that cannot dial instances over TLS gets the upstream's plain
socket instead, and the report says so.

Usage (Debian packages ``nginx``, ``wrk``, ``gcc``, ``libc6-dev``)::

    python bench/gateway.py [--seconds 10] [--connections 50] [--threads 2] [--runs 1] [--json]
    python bench/gateway.py --check      # ~10 s; exits 1 if the set-up or an enforcement is wrong

Printed: req/s, p50 and p99 (wrk), errors, CPU microseconds per request of each gateway process
(user+system from /proc: nginx master + worker, or the whole front door process), the steal and
"other" share of the machine's CPU during each timed run, the ratio noops/nginx of req/s and the
difference of p99 in ms. Target: >= 0.8x nginx's req/s, p99 within 1 ms of nginx's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import cpu_seconds, free_port, parse_wrk, start_nginx, stop, wait_path, wait_port

HOST = "bench.localhost"
APP, PROCESS = "bench", "web"
UPSTREAM_DNS = "web.bench.noops.local"  # what nginx checks (proxy_ssl_name); noops checks the URI
BODY = b"ok\n"
USER, DEVICE, PASSWORD = "bench", "laptop", "bench-password-1"
COOKIE_NAME = "__Host-noops_session"
POLICY = textwrap.dedent(f"""\
    mode = "enforce"
    [[route]]
    id = "bench"
    host = "{HOST}"
    path = "/"
    authenticated = true
    device_cert = "required"
    min_score = 50
    """)

SHIM_C = r"""
/* LD_PRELOAD into wrk: a client certificate on every SSL_CTX, and a chosen SNI. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
typedef struct ssl_st SSL;
#define SSL_FILETYPE_PEM 1
#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static SSL_CTX *(*real)(const SSL_METHOD *);
    if (!real) real = (SSL_CTX *(*)(const SSL_METHOD *))dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = real(method);
    const char *cert = getenv("BENCH_CLIENT_CERT"), *key = getenv("BENCH_CLIENT_KEY");
    if (ctx && cert && key) {
        int (*chain)(SSL_CTX *, const char *) =
            (int (*)(SSL_CTX *, const char *))dlsym(RTLD_DEFAULT, "SSL_CTX_use_certificate_chain_file");
        int (*pkey)(SSL_CTX *, const char *, int) =
            (int (*)(SSL_CTX *, const char *, int))dlsym(RTLD_DEFAULT, "SSL_CTX_use_PrivateKey_file");
        if (!chain || !pkey || chain(ctx, cert) != 1 || pkey(ctx, key, SSL_FILETYPE_PEM) != 1) {
            fprintf(stderr, "client certificate shim: cannot load %s and %s\n", cert, key);
            exit(70);
        }
    }
    return ctx;
}

long SSL_ctrl(SSL *s, int cmd, long larg, void *parg) {
    static long (*real)(SSL *, int, long, void *);
    if (!real) real = (long (*)(SSL *, int, long, void *))dlsym(RTLD_NEXT, "SSL_ctrl");
    const char *sni = getenv("BENCH_SNI");
    if (cmd == SSL_CTRL_SET_TLSEXT_HOSTNAME && sni && *sni) parg = (void *)sni;
    return real(s, cmd, larg, parg);
}
"""


# -- certificates -------------------------------------------------------------------------------

@dataclass
class Pki:
    """PEM files (cert = leaf + intermediate) of everything the benchmark presents or trusts."""

    bundle: Path  # root + intermediate: what every verifier trusts
    upstream: tuple[Path, Path]  # the app's SVID (+ DNS SAN for nginx)
    gateway: tuple[Path, Path]  # the gateway SVID: client certificate towards the upstream
    serving: tuple[Path, Path]  # nginx's serving certificate for bench.localhost
    device: tuple[Path, Path]  # the user's enrolled device: the load client's certificate
    device_serial: int


def make_pki(ca_dir: Path, out: Path) -> Pki:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    from noops.gate.pki import CertificateAuthority

    ca = CertificateAuthority.create(ca_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = out / "ca-bundle.pem"
    bundle.write_bytes(ca.export_ca_bundle())
    svid = ca.issue_svid(APP, PROCESS)
    upstream = _with_dns_name(ca_dir, svid.cert_pem, UPSTREAM_DNS)
    up_crt, up_key = out / "upstream.crt", out / "upstream.key"
    up_crt.write_bytes(upstream)
    up_key.write_bytes(svid.key_pem)
    os.chmod(up_key, 0o600)
    # the SVID with the extra DNS name must still be what noops accepts for this workload
    ca.verify_server(upstream, svid.spiffe_id or "")
    p12 = ca.enroll_device(DEVICE, USER, password=PASSWORD)
    key, cert, chain = pkcs12.load_key_and_certificates(p12, PASSWORD.encode())
    assert key is not None and cert is not None
    dev_crt, dev_key = out / "device.crt", out / "device.key"
    # leaf + intermediate, as a TLS client sends them (the root is self-signed: left out)
    dev_crt.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                 for c in [cert, *chain] if c.issuer != c.subject))
    dev_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(dev_key, 0o600)
    return Pki(bundle=bundle, upstream=(up_crt, up_key),
               gateway=ca.issue_gateway_identity().write(out, "gateway"),
               serving=ca.issue_gateway_cert([HOST]).write(out, "serving"),
               device=(dev_crt, dev_key), device_serial=cert.serial_number)


def _with_dns_name(ca_dir: Path, cert_pem: bytes, dns: str) -> bytes:
    """Re-sign the SVID leaf with the intermediate (files documented in noops.gate.pki) adding
    one DNS SAN, so that nginx's ``proxy_ssl_verify`` has a name to check."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    leaf = x509.load_pem_x509_certificate(cert_pem)
    inter_key = serialization.load_pem_private_key((ca_dir / "intermediate.key").read_bytes(), None)
    inter_pem = (ca_dir / "intermediate.crt").read_bytes()
    builder = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
               .public_key(leaf.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc))
    for ext in leaf.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName([*value, x509.DNSName(dns)])
        builder = builder.add_extension(value, ext.critical)
    cert = builder.sign(inter_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM) + inter_pem


# -- the shared upstream and nginx ---------------------------------------------------------------

def upstream_block(tls_sock: Path, plain_sock: Path, direct_port: int, pki: Pki) -> str:
    """One server, one worker: the mTLS socket both gateways use, a plain socket (for a front
    door that cannot dial instances over TLS yet) and a TCP port where the load tool meets the
    upstream without a gateway (the ceiling of wrk with client certificates on this machine)."""
    return textwrap.dedent(f"""\
        server {{
            listen unix:{tls_sock} ssl;
            listen unix:{plain_sock};
            listen 127.0.0.1:{direct_port} ssl;
            ssl_certificate {pki.upstream[0]};
            ssl_certificate_key {pki.upstream[1]};
            ssl_protocols TLSv1.3;
            ssl_client_certificate {pki.bundle};
            ssl_verify_client on;
            ssl_verify_depth 2;
            ssl_session_cache off;
            default_type text/plain;
            location / {{ return 200 "ok\\n"; }}
            # used once before timing: shows what the gateway added (noops' signed assertion)
            location = /echo-assertion {{ return 200 "$http_x_noops_assertion\\n"; }}
        }}""")


def nginx_gateway_block(tls_sock: Path, port: int, pki: Pki) -> str:
    return textwrap.dedent(f"""\
        upstream app {{ server unix:{tls_sock}; keepalive 64; keepalive_requests 1000000; }}
        server {{
            listen 127.0.0.1:{port} ssl reuseport backlog=1024;
            ssl_certificate {pki.serving[0]};
            ssl_certificate_key {pki.serving[1]};
            ssl_protocols TLSv1.3;
            ssl_client_certificate {pki.bundle};
            ssl_verify_client on;
            ssl_verify_depth 2;
            location / {{
                proxy_pass https://app;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
                proxy_set_header X-Forwarded-For $remote_addr;
                proxy_set_header X-Forwarded-Proto $scheme;
                proxy_set_header X-Forwarded-Host $host;
                proxy_set_header X-Request-Id $request_id;
                # who the client is, as noops forwards its signed assertion
                proxy_set_header X-Client-Cert-Subject $ssl_client_s_dn;
                proxy_set_header Via "1.1 nginx";
                proxy_ssl_certificate {pki.gateway[0]};
                proxy_ssl_certificate_key {pki.gateway[1]};
                proxy_ssl_trusted_certificate {pki.bundle};
                proxy_ssl_verify on;
                proxy_ssl_verify_depth 2;
                proxy_ssl_name {UPSTREAM_DNS};
                proxy_ssl_protocols TLSv1.3;
                proxy_ssl_session_reuse on;
                proxy_buffering on;
            }}
        }}""")


# -- the noops side ------------------------------------------------------------------------------

@dataclass
class NoopsSide:
    """What the front door in this tree does: ``pep`` read from its code (the probes confirm
    it), ``upstream_tls`` found out by trying (see :func:`route_noops`)."""

    pep: bool  # noops.gate.pep exists and the front door uses it
    upstream_tls: bool = True  # the front door dials the endpoint over mTLS (spiffe_id pinned)


def detect_noops() -> NoopsSide:
    import noops.gate.frontdoor as frontdoor

    source = Path(frontdoor.__file__).read_text()
    return NoopsSide(pep=importlib.util.find_spec("noops.gate.pep") is not None
                     and ("Gatekeeper" in source or "noops.gate.pep" in source))


def provision_gate(home: Path, device_serial: int) -> str:
    """User, session, policy, trust settings and known places under ``home/gate`` (the layout
    of :class:`noops.gate.pep.GateFiles`); returns the session cookie value.

    The CA is already in ``home/gate/ca`` (:func:`make_pki`). The state is that of a user who
    signed in with password + TOTP from 127.0.0.1 with the enrolled device, so the device and
    the network are known places. The only setting changed from the defaults is the request
    rate counted as normal: one user sends the whole benchmark (~1M requests a minute), and the
    default (120/min) would cost the score its ``normal_rate`` points and add the penalty.
    """
    from noops.gate import identity
    from noops.gate.policy import PolicyStore

    if identity.COOKIE_NAME != COOKIE_NAME:
        raise SystemExit(f"the session cookie is now {identity.COOKIE_NAME}; update COOKIE_NAME")
    gate = home / "gate"
    (gate / "audit").mkdir(parents=True, exist_ok=True)
    store = identity.IdentityStore(gate / "identity.db")
    try:
        store.add_user(USER, PASSWORD, groups=["bench"])
        _, cookie = store.create_session(USER, auth_methods={"password", "totp"},
                                         device=DEVICE, client_ip="127.0.0.1")
    finally:
        store.close()
    PolicyStore(gate / "policy").apply(POLICY, actor="bench")
    (gate / "trust.toml").write_text("rate_limit_per_min = 100000000\n")
    known = {"networks": {USER: ["127.0.0.0/24"]}, "devices": {USER: [f"{device_serial:x}"]}}
    (gate / "known.json").write_text(json.dumps(known))
    os.chmod(gate / "known.json", 0o600)
    return cookie


def write_routes(home: Path, socket_path: Path, tls: bool, generation: int) -> None:
    """``home/run/routes.json`` as the daemon writes it (atomically); see :func:`wait_routes`."""
    endpoint: dict[str, Any] = {"id": "bench-1", "socket_path": str(socket_path), "ready": True,
                                "draining": False}
    if tls:
        endpoint["spiffe_id"] = f"spiffe://noops.local/app/{APP}/{PROCESS}"
    routes = {"apps": {APP: {"hosts": [HOST], "endpoints": [endpoint]}}, "generation": generation}
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / ".routes.json.tmp"
    tmp.write_text(json.dumps(routes))
    os.replace(tmp, run / "routes.json")


def wait_routes(home: Path, generation: int, timeout_s: float = 10.0) -> None:
    ack = home / "run" / "routes.applied"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if int(ack.read_text() or 0) >= generation:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"the front door did not apply routes generation {generation} in {timeout_s}s")


def route_noops(home: Path, port: int, side: NoopsSide, tls_sock: Path, plain_sock: Path,
                cookie: str, pki: Pki) -> None:
    """Route the front door to the mTLS socket (the instance's SVID pinned by ``spiffe_id``).
    A front door that cannot dial instances over TLS yet gets the same upstream's plain
    socket instead (``side.upstream_tls`` becomes False and the report says so)."""
    wait_routes(home, 1)
    status, body = probe(port, cookie, pki.device)
    if status == 200 and body == BODY:
        return
    side.upstream_tls = False
    print(f"noops: no answer over the mTLS upstream ({status} {body[:80]!r}); using the "
          "upstream's plain socket", file=sys.stderr)
    write_routes(home, plain_sock, tls=False, generation=2)
    wait_routes(home, 2)


# -- load and checks -----------------------------------------------------------------------------

def build_shim(work: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("a C compiler is needed for wrk's client-certificate shim: apt-get install -y gcc")
    src, lib = work / "clientcert.c", work / "clientcert.so"
    src.write_text(SHIM_C)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
    return lib


def wrk(port: int, seconds: int, threads: int, connections: int, cookie: str,
        env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-H", f"Host: {HOST}", "-H", f"Cookie: {COOKIE_NAME}={cookie}",
                          f"https://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True, env=env).stdout
    result = parse_wrk(out)
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = float(total.group(1)) if total else float("nan")
    return result


def probe(port: int, cookie: str | None, cert: tuple[Path, Path] | None,
          path: str = "/") -> tuple[int | None, bytes]:
    """One HTTPS request (SNI and Host ``bench.localhost``); returns (status, body), or
    (None, why the connection failed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # what is compared is the client side; both serve our CA
    if cert is not None:
        ctx.load_cert_chain(cert[0], cert[1])
    cookie_line = f"Cookie: {COOKIE_NAME}={cookie}\r\n" if cookie else ""
    request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{cookie_line}"
               "Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(request)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (OSError, ssl.SSLError) as exc:
        return None, f"{type(exc).__name__}: {exc}".encode()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return None, f"no HTTP response ({len(data)} bytes)".encode()


def verify(name: str, port: int, cookie: str, pki: Pki) -> dict[str, Any]:
    """Probe one gateway before timing. Raises SystemExit if the device + session request does
    not reach the upstream; the rest is evidence of what the gateway enforces."""
    status, body = probe(port, cookie, pki.device)
    if status != 200 or body != BODY:
        raise SystemExit(f"{name}: a request with the device certificate and the session got "
                         f"{status} {body[:200]!r}; expected 200 {BODY!r} from the upstream")
    no_cert, _ = probe(port, cookie, None)
    no_session, _ = probe(port, None, pki.device)
    _, echoed = probe(port, cookie, pki.device, "/echo-assertion")
    token = echoed.strip()
    return {"ok": status, "without_cert": no_cert, "without_session": no_session,
            "refuses_without_cert": no_cert != 200, "refuses_without_session": no_session != 200,
            "assertion_forwarded": token.count(b".") == 2 and len(token) > 40}


def audit_summary(home: Path, full: bool) -> dict[str, Any]:
    """Records in the front door's decision log (``home/gate/audit``); ``full`` also checks the
    hash chain (slow for millions of lines) and reads the first allow record's score."""
    folder = home / "gate" / "audit"
    files = sorted(folder.glob("decisions.jsonl*")) if folder.is_dir() else []
    records = allows = 0
    first_allow: dict[str, Any] | None = None
    for path in files:
        with open(path, "rb") as fh:
            for line in fh:
                records += 1
                if b'"outcome":"allow"' in line:
                    allows += 1
                    if first_allow is None:
                        first_allow = json.loads(line)
    summary: dict[str, Any] = {"records": records, "allow": allows}
    if first_allow is not None:
        summary["score"] = first_allow.get("score")
        summary["signals"] = {c["signal"]: c["points"] for c in first_allow.get("contributions", [])}
    if full and files:
        from noops.gate.audit import verify as verify_chain

        result = verify_chain(folder / "decisions.jsonl")
        summary["chain_ok"] = result.ok
    return summary


def enforced(side: NoopsSide, probe_result: dict[str, Any], audit: dict[str, Any],
             served: int) -> list[str]:
    """What the front door was seen to do (evidence, not intent)."""
    seen = ["TLS (serving certificate by SNI)"]
    if probe_result["refuses_without_cert"]:
        seen.append("client certificate required")
    if probe_result["refuses_without_session"]:
        seen.append("session required")
    if "score" in audit:
        seen.append(f"trust score ({audit['score']}) and policy (min_score 50, device_cert required)")
    if probe_result["assertion_forwarded"]:
        seen.append("signed assertion header")
    if audit["records"]:
        chain = {True: ", hash chain verified", False: ", hash chain BROKEN"}.get(audit.get("chain_ok"), "")
        seen.append(f"audit ({audit['records']} records, {audit['allow']} allow, for ~{served} "
                    f"requests sent{chain})")
    seen.append("mTLS to the upstream (gateway SVID; SPIFFE ID pinned)" if side.upstream_tls
                else "plain HTTP to the upstream (no mTLS to instances in this tree)")
    return seen


# -- set-up, measurement, report -----------------------------------------------------------------

@dataclass
class Setup:
    """Everything running for one benchmark, stopped by :func:`main`'s ``finally``."""

    work: Path
    home: Path
    pki: Pki
    cookie: str
    wrk_env: dict[str, str]
    ports: dict[str, int]  # nginx, noops, direct (the upstream's TCP port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pid(self, name: str) -> int:
        return self.procs[1].pid if name == "nginx" else self.procs[-1].pid  # the front door: last


# An OTLP/HTTP receiver on a Unix socket that takes and discards what it gets: the front door
# sends its own spans as under `noops up`, and the receiver's work is not the gateway's.
_SPAN_SINK = r"""
import http.server, socketserver, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
    def address_string(self):
        return "unix"
socketserver.ThreadingUnixStreamServer(sys.argv[1], Sink).serve_forever()
"""


def start(work: Path, side: NoopsSide, setup_procs: list[subprocess.Popen[bytes]],
          spans: bool = True) -> Setup:
    """CA, user state, upstream, nginx and the front door (sending its spans to a sink, as
    under ``noops up``, unless ``spans`` is false); ``setup_procs`` collects the processes as
    they start (so the caller stops them even if a later step fails)."""
    home = work / "home"
    pki = make_pki(home / "gate" / "ca", work / "pki")
    os.chmod(work / "pki", 0o755)  # the nginx worker reads the certificates
    cookie = provision_gate(home, pki.device_serial)
    shim = build_shim(work)
    wrk_env = {**os.environ, "LD_PRELOAD": str(shim), "BENCH_SNI": HOST,
               "BENCH_CLIENT_CERT": str(pki.device[0]), "BENCH_CLIENT_KEY": str(pki.device[1])}
    tls_sock, plain_sock = work / "up-tls.sock", work / "up.sock"
    ports = {"nginx": free_port(), "noops": free_port(), "direct": free_port()}
    setup_procs.append(start_nginx(work / "upstream",
                                   upstream_block(tls_sock, plain_sock, ports["direct"], pki)))
    wait_path(tls_sock)
    wait_path(plain_sock)
    setup_procs.append(start_nginx(work / "nginx", nginx_gateway_block(tls_sock, ports["nginx"], pki)))
    write_routes(home, tls_sock, tls=True, generation=1)
    telemetry: list[str] = []
    if spans:
        sink = work / "otlp.sock"
        setup_procs.append(subprocess.Popen([sys.executable, "-c", _SPAN_SINK, str(sink)]))
        wait_path(sink)
        telemetry = ["--otlp-socket", str(sink)]
    with open(work / "frontdoor.log", "wb") as door_log:
        setup_procs.append(subprocess.Popen(
            [sys.executable, "-m", "noops.gate.frontdoor", "--home", str(home),
             "--port", str(ports["noops"]), *telemetry],
            env={**os.environ, "NOOPS_HOME": str(home)}, stdout=door_log, stderr=subprocess.STDOUT))
    wait_port(ports["nginx"])
    wait_port(ports["noops"])
    route_noops(home, ports["noops"], side, tls_sock, plain_sock, cookie, pki)
    return Setup(work, home, pki, cookie, wrk_env, ports, setup_procs)


def probe_problems(side: NoopsSide, probes: dict[str, dict[str, Any]]) -> list[str]:
    problems = [] if probes["nginx"]["refuses_without_cert"] else [
        "nginx served a request without a client certificate"]
    if side.pep:
        problems += [f"noops: {what} was not enforced" for what, key in
                     (("the client certificate", "refuses_without_cert"),
                      ("the session", "refuses_without_session"),
                      ("the signed assertion", "assertion_forwarded")) if not probes["noops"][key]]
    return problems


class Machine:
    """CPU accounting of the whole machine around one timed run: how much the hypervisor
    stole, and how much CPU went to processes that are not part of the benchmark (other jobs on
    a shared machine). Both should be ~0 for figures worth comparing."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _sample(self) -> tuple[list[int], float, float]:
        # /proc/stat "cpu": user nice system idle iowait irq softirq steal
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
        return fields, cpu_seconds(self.pids), children.ru_utime + children.ru_stime

    def finish(self, result: dict[str, float]) -> None:
        (a, ours_a, wrk_a), (b, ours_b, wrk_b) = self.start, self._sample()
        delta = [y - x for x, y in zip(a, b, strict=True)]
        total_s = max(sum(delta), 1) / self.ticks
        busy_s = (delta[0] + delta[1] + delta[2] + delta[5] + delta[6]) / self.ticks
        result["steal_pct"] = 100.0 * delta[7] / self.ticks / total_s
        other_s = busy_s - (ours_b - ours_a) - (wrk_b - wrk_a)
        result["other_pct"] = max(0.0, 100.0 * other_s / total_s)


def measure(setup: Setup, args: argparse.Namespace) -> tuple[dict[str, list[dict[str, float]]], int]:
    """``--runs`` rounds of warm-up + timed wrk per gateway, order alternated; returns the
    results and how many requests were sent to the front door (to compare with its audit)."""
    results: dict[str, list[dict[str, float]]] = {"nginx": [], "noops": []}
    load = (args.threads, args.connections, setup.cookie, setup.wrk_env)
    served = 4  # the probes
    for run in range(args.runs):
        for name in (["nginx", "noops"] if run % 2 == 0 else ["noops", "nginx"]):
            port, pid = setup.ports[name], setup.pid(name)
            if args.warmup:
                warm = wrk(port, args.warmup, *load)
                served += int(warm["requests"]) if name == "noops" else 0
            before, machine = cpu_seconds([pid]), Machine([p.pid for p in setup.procs])
            result = wrk(port, args.seconds, *load)
            used = cpu_seconds([pid]) - before
            machine.finish(result)
            served += int(result["requests"]) if name == "noops" else 0
            result["cpu_us_per_req"] = used / max(result["requests"], 1) * 1e6
            results[name].append(result)
            print(f"{name}: {result}", file=sys.stderr)
    return results, served


def measure_direct(setup: Setup, args: argparse.Namespace) -> dict[str, float]:
    """The load tool straight at the upstream (mTLS, same settings): what wrk can drive here."""
    load = (args.threads, args.connections, setup.cookie, setup.wrk_env)
    if args.warmup:
        wrk(setup.ports["direct"], args.warmup, *load)
    machine = Machine([p.pid for p in setup.procs])
    direct = wrk(setup.ports["direct"], args.seconds, *load)
    machine.finish(direct)
    print(f"direct: {direct}", file=sys.stderr)
    return direct


def print_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    summary, direct = report["results"], report["direct"]
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, keep-alive, TLS 1.3 with a "
          f"device certificate, {args.runs} run(s), median; shared upstream: nginx return 200 over "
          "mTLS on a Unix socket")
    print(f"{'gateway':<8}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'CPU us/req':>12}{'errors':>8}"
          f"{'steal %':>9}{'other %':>9}")
    for name, r in summary.items():
        print(f"{name:<8}{r['rps']:>12.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
              f"{r['cpu_us_per_req']:>12.1f}{r['errors']:>8.0f}{r['steal_pct']:>9.0f}{r['other_pct']:>9.0f}")
    print(f"{'(direct)':<8}{direct['rps']:>12.0f}{direct['p50_ms']:>10.2f}{direct['p99_ms']:>10.2f}"
          f"{'':>12}{direct['errors']:>8.0f}{direct['steal_pct']:>9.0f}{direct['other_pct']:>9.0f}"
          "   wrk straight to the upstream (the load tool's ceiling)")
    print(f"ratio noops/nginx (req/s): {report['ratio_rps']:.2f}   (target >= 0.80)")
    if args.runs > 1:
        print(f"  median of each round's ratio: {report['ratio_rps_paired']:.2f}   (the two gateways of a "
              "round run back to back, so a change of machine speed between rounds cancels out)")
    print(f"p99 noops - nginx: {report['p99_diff_ms']:+.2f} ms   (target <= +1.00)")
    print(f"nginx enforced: {'; '.join(report['enforced']['nginx'])}")
    print(f"noops enforced: {'; '.join(report['enforced']['noops'])}")
    print("noops telemetry: " + ("its own spans, sent every second (as under noops up)"
                                 if report["settings"]["gateway_spans"] else "off (--no-spans)"))
    if not report["pep_detected"]:
        print("noops: no policy enforcement point in this tree (noops.gate.pep not used by the "
              "front door): session, score, policy, assertion and audit were not on")
    print(f"load average: {' '.join(f'{x:.2f}' for x in report['load'])}. During each timed run, "
          "steal % = machine CPU time the hypervisor withheld, other % = machine CPU time used by "
          "processes outside the benchmark: compare figures only where both are ~0.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="seconds of timed load per gateway and run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of untimed load first")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="rounds (order alternated); the median is reported")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-spans", action="store_true",
                    help="the front door without its own spans (noops up always sends them)")
    ap.add_argument("--check", action="store_true",
                    help="smoke test: the checks, then 1 s of load each; exit 1 if anything is off")
    args = ap.parse_args()
    if args.check:
        args.seconds, args.warmup, args.runs, args.connections = 1, 1, 1, min(args.connections, 10)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y {tool}")

    side = detect_noops()
    work = Path(tempfile.mkdtemp(prefix="noops-bench-gateway-"))
    os.chmod(work, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        setup = start(work, side, procs, spans=not args.no_spans)
        try:
            probes = {name: verify(name, setup.ports[name], setup.cookie, setup.pki)
                      for name in ("nginx", "noops")}
        except SystemExit:
            print((work / "frontdoor.log").read_text()[-3000:], file=sys.stderr)
            raise
        for name, result in probes.items():
            print(f"{name}: {result}", file=sys.stderr)
        problems = probe_problems(side, probes)
        results, served = measure(setup, args)
        direct = measure_direct(setup, args)
        stop(procs.pop())  # the front door: its audit writer flushes on the way out
        audit = audit_summary(setup.home, full=args.check)
        if side.pep and audit.get("chain_ok") is False:
            problems.append("noops: the audit chain does not verify")
        summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                   for name, runs in results.items()}
        problems += [f"{name}: {r['errors']:.0f} errors under load"
                     for name, r in [*summary.items(), ("direct", direct)] if r["errors"]]
        report = {
            "results": summary, "direct": direct,
            "ratio_rps": summary["noops"]["rps"] / summary["nginx"]["rps"],
            # each round's two gateways ran back to back: their ratio sees one machine speed
            "ratio_rps_paired": statistics.median(
                n["rps"] / g["rps"] for n, g in zip(results["noops"], results["nginx"], strict=True)),
            "p99_diff_ms": summary["noops"]["p99_ms"] - summary["nginx"]["p99_ms"],
            "enforced": {"nginx": ["TLS", "client certificate required (CA chain)",
                                   f"mTLS to the upstream (gateway SVID; name {UPSTREAM_DNS} checked)"],
                         "noops": enforced(side, probes["noops"], audit, served)},
            "probes": probes, "audit": audit, "noops_requests": served, "pep_detected": side.pep,
            "problems": problems, "load": os.getloadavg(),
            "settings": {"seconds": args.seconds, "warmup": args.warmup, "connections": args.connections,
                         "threads": args.threads, "runs": args.runs, "gateway_spans": not args.no_spans},
        }
        if args.json:
            print(json.dumps(report))
        else:
            print_report(args, report)
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        if args.check and problems:
            return 1
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
