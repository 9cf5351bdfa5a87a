"""noops.gate.mtls with real keys and real TLS handshakes over socket pairs: the SVID files an
instance monitor serves, the gateway's self-renewing identity, and SPIFFE ID pinning."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from noops.errors import NoopsError
from noops.gate.mtls import (
    SERVER_NAME,
    PeerIdentityError,
    SvidFiles,
    SvidUnavailable,
    UpstreamTLS,
    gateway_spiffe_id,
    load_or_create_ca,
    peer_spiffe_id,
)
from noops.gate.pki import CertificateAuthority, Issued

TD = "noops.local"
WEB = f"spiffe://{TD}/app/shop/web"
GATEWAY = f"spiffe://{TD}/gateway"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", TD)


def _write(ca: CertificateAuthority, issued: Issued, folder: Path) -> SvidFiles:
    folder.mkdir(exist_ok=True)
    issued.write(folder, "svid")
    (folder / "ca.crt").write_bytes(ca.export_ca_bundle())
    return SvidFiles(folder / "svid.crt", folder / "svid.key", folder / "ca.crt", recheck_s=0)


def _der(issued: Issued) -> bytes:
    return x509.load_pem_x509_certificates(issued.cert_pem)[0].public_bytes(
        serialization.Encoding.DER)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    """One TLS handshake over a socket pair; each side records the peer's certificate."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    out: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                out["client_cert"] = tls.getpeercert(binary_form=True)
                tls.sendall(tls.recv(5))
        except OSError as exc:
            out["server_error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=SERVER_NAME) as tls:
            out["server_cert"] = tls.getpeercert(binary_form=True)
            out["version"] = tls.version()
            tls.sendall(b"hello")
            out["echo"] = tls.recv(5)
    except OSError as exc:
        out["client_error"] = exc
    finally:
        thread.join(10)
        right.close()
    return out


# -- the CA directory ----------------------------------------------------------------------------


def test_load_or_create_ca_makes_one_ca_even_when_processes_race(tmp_path: Path) -> None:
    target = tmp_path / "home" / "gate" / "ca"
    with ThreadPoolExecutor(8) as pool:  # flock works between separate open()s of one process
        cas = list(pool.map(lambda _i: load_or_create_ca(target), range(8)))
    assert len({c.root.serial_number for c in cas}) == 1
    assert load_or_create_ca(target).root.serial_number == cas[0].root.serial_number
    assert oct(target.stat().st_mode & 0o777) == "0o700"


# -- SPIFFE IDs of certificates ------------------------------------------------------------------


def _self_signed(sans: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_peer_spiffe_id_is_the_single_spiffe_uri_san(ca: CertificateAuthority) -> None:
    assert peer_spiffe_id(_der(ca.issue_svid("shop", "web"))) == WEB
    assert peer_spiffe_id(_der(ca.issue_gateway_identity())) == GATEWAY
    uri = x509.UniformResourceIdentifier
    assert peer_spiffe_id(_self_signed([uri(WEB), uri(GATEWAY)])) is None  # two URI SANs
    assert peer_spiffe_id(_self_signed([uri("https://example.com/x")])) is None
    assert peer_spiffe_id(_self_signed([x509.DNSName("localhost")])) is None
    assert peer_spiffe_id(_self_signed([])) is None
    assert peer_spiffe_id(_der(ca.issue_gateway_cert(["localhost"]))) is None  # DNS only
    assert peer_spiffe_id(b"not a certificate") is None
    assert peer_spiffe_id(None) is None and peer_spiffe_id(b"") is None


# -- SvidFiles (the instance side) ---------------------------------------------------------------


def test_svid_files_serve_mtls_to_the_gateway(ca: CertificateAuthority, tmp_path: Path) -> None:
    files = _write(ca, ca.issue_svid("shop", "web"), tmp_path / "svid")
    gateway = UpstreamTLS(ca)
    out = _handshake(files.server_context([GATEWAY]), gateway.context())
    assert out.get("echo") == b"hello", out
    assert out["version"] == "TLSv1.3"
    assert peer_spiffe_id(out["server_cert"]) == WEB
    assert peer_spiffe_id(out["client_cert"]) == GATEWAY
    assert files.spiffe_id == WEB


def test_check_peer_lets_in_only_the_allowed_ids(ca: CertificateAuthority, tmp_path: Path) -> None:
    files = _write(ca, ca.issue_svid("shop", "web"), tmp_path / "svid")
    other = _write(ca, ca.issue_svid("evil", "web"), tmp_path / "other")
    left, right = socket.socketpair()
    server = files.server_context([GATEWAY]).wrap_socket(left, server_side=True,
                                                          do_handshake_on_connect=False)
    client = other.client_context().wrap_socket(right, server_hostname=SERVER_NAME,
                                                do_handshake_on_connect=False)
    thread = threading.Thread(target=server.do_handshake)
    thread.start()
    client.do_handshake()
    thread.join(5)
    try:
        # the chain is fine (same CA): only the SPIFFE ID check keeps this workload out
        assert SvidFiles.check_peer(server, [GATEWAY]) is None
        assert SvidFiles.check_peer(server, [f"spiffe://{TD}/app/evil/web"]) is not None
        assert SvidFiles.check_peer(client, [WEB]) == WEB
        assert SvidFiles.check_peer(None, [GATEWAY]) is None
    finally:
        server.close()
        client.close()


def test_svid_files_refuse_clients_without_a_certificate(ca: CertificateAuthority,
                                                         tmp_path: Path) -> None:
    files = _write(ca, ca.issue_svid("shop", "web"), tmp_path / "svid")
    out = _handshake(files.server_context([GATEWAY]), ca.client_ssl_context(None))
    assert "echo" not in out and "certificate" in str(out.get("server_error"))


def test_rotated_files_reach_new_handshakes_only(ca: CertificateAuthority, tmp_path: Path) -> None:
    first = ca.issue_svid("shop", "web")
    files = _write(ca, first, tmp_path / "svid")
    old_ctx = files.server_context()
    assert files.serial == first.serial
    second = ca.issue_svid("shop", "web")
    second.write(tmp_path / "svid", "svid")
    new_ctx = files.server_context()
    assert files.serial == second.serial and new_ctx is not old_ctx
    gateway = UpstreamTLS(ca)
    seen_old = _handshake(old_ctx, gateway.context())  # a context already handed out keeps its cert
    seen_new = _handshake(new_ctx, gateway.context())
    assert x509.load_der_x509_certificate(seen_old["server_cert"]).serial_number == first.serial
    assert x509.load_der_x509_certificate(seen_new["server_cert"]).serial_number == second.serial


def test_files_are_rechecked_at_most_every_recheck_s(ca: CertificateAuthority,
                                                     tmp_path: Path) -> None:
    files = _write(ca, ca.issue_svid("shop", "web"), tmp_path / "svid")
    files.recheck_s = 3600
    serial = files.serial
    ca.issue_svid("shop", "web").write(tmp_path / "svid", "svid")
    assert files.serial == serial  # not looked at yet: cheap per connection
    files.recheck_s = 0
    assert files.serial != serial


def test_half_written_rotation_keeps_the_previous_pair(ca: CertificateAuthority,
                                                       tmp_path: Path) -> None:
    first = ca.issue_svid("shop", "web")
    files = _write(ca, first, tmp_path / "svid")
    assert files.serial == first.serial
    (tmp_path / "svid" / "svid.key").write_bytes(ca.issue_svid("shop", "web").key_pem)
    assert files.serial == first.serial  # new key + old certificate: mismatch, keep the old
    _handshake(files.server_context(), UpstreamTLS(ca).context())


def test_an_expired_svid_is_never_presented(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    ca = CertificateAuthority.create(tmp_path / "old-ca", TD, now=past)
    files = _write(ca, ca.issue_svid("shop", "web", now=past), tmp_path / "svid")
    with pytest.raises(SvidUnavailable, match="expired") as info:
        files.server_context([GATEWAY])
    assert isinstance(info.value, NoopsError) and "daemon" in str(info.value)
    with pytest.raises(SvidUnavailable):
        files.client_context()
    # a context handed out before expiry is not handed out again once the certificate expired
    # (2 s: X.509 times are whole seconds, so a 1 s certificate may have only ms left when read)
    fresh = ca.issue_svid("shop", "web", ttl_s=2)
    fresh.write(tmp_path / "svid", "svid")
    assert files.server_context() is not None
    time.sleep(max(0.0, fresh.not_after.timestamp() - time.time()) + 0.1)
    with pytest.raises(SvidUnavailable, match="expired"):
        files.server_context()


def test_missing_files_say_what_to_do(tmp_path: Path) -> None:
    files = SvidFiles(tmp_path / "nope.crt", tmp_path / "nope.key", tmp_path / "ca.crt")
    with pytest.raises(SvidUnavailable, match="noops up"):
        files.client_context()


# -- UpstreamTLS (the gateway side) --------------------------------------------------------------


def test_upstream_tls_pins_the_exact_spiffe_id(ca: CertificateAuthority, tmp_path: Path) -> None:
    files = _write(ca, ca.issue_svid("shop", "web"), tmp_path / "svid")
    gateway = UpstreamTLS(ca)
    left, right = socket.socketpair()
    server = files.server_context().wrap_socket(left, server_side=True,
                                                do_handshake_on_connect=False)
    client = gateway.context().wrap_socket(right, server_hostname=gateway.server_hostname,
                                           do_handshake_on_connect=False)
    thread = threading.Thread(target=server.do_handshake)
    thread.start()
    client.do_handshake()
    thread.join(5)
    try:
        assert gateway.check(client, WEB)
        assert not gateway.check(client, WEB + "x")
        assert not gateway.check(client, f"spiffe://{TD}/app/shop")
        assert not gateway.check(client, "")  # an endpoint without a pinned ID is refused
        assert not gateway.check(None, WEB)
    finally:
        server.close()
        client.close()


def test_upstream_tls_refuses_a_server_from_another_ca(ca: CertificateAuthority,
                                                       tmp_path: Path) -> None:
    rogue = CertificateAuthority.create(tmp_path / "rogue", TD)
    files = _write(rogue, rogue.issue_svid("shop", "web"), tmp_path / "svid")
    out = _handshake(files.server_context(), UpstreamTLS(ca).context())
    assert isinstance(out.get("client_error"), ssl.SSLCertVerificationError)


def test_upstream_tls_renews_at_half_life_without_touching_old_contexts(
        ca: CertificateAuthority, tmp_path: Path) -> None:
    gateway = UpstreamTLS(ca, ttl_s=2)
    first_ctx, first_serial = gateway.context(), gateway.serial
    assert gateway.context() is first_ctx  # cheap: same context until half-life
    time.sleep(1.1)
    second_ctx = gateway.context()
    assert second_ctx is not first_ctx and gateway.serial != first_serial
    assert gateway.renewals == 2
    files = _write(ca, ca.issue_svid("shop", "web"), tmp_path / "svid")
    out = _handshake(files.server_context(), second_ctx)
    assert x509.load_der_x509_certificate(out["client_cert"]).serial_number == gateway.serial


def test_for_ca_creates_the_ca_and_uses_the_gateway_id(tmp_path: Path) -> None:
    gateway = UpstreamTLS.for_ca(tmp_path / "gate" / "ca")
    assert gateway.spiffe_id == gateway_spiffe_id(TD) == GATEWAY
    assert (tmp_path / "gate" / "ca" / "ca.json").exists()
    remaining = (gateway.not_after - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert 3500 < remaining <= 3600


def test_peer_identity_error_is_an_oserror_and_a_noops_error() -> None:
    err = PeerIdentityError("endpoint x is not y")
    assert isinstance(err, OSError) and isinstance(err, NoopsError)


def test_workload_socket_certificate_is_renewed_in_place(tmp_path: Path) -> None:
    """The gateway's workload-socket SVID lives an hour: renew() swaps a fresh one into the same
    context once half of it has passed, and the next handshake presents it."""
    import dataclasses

    from cryptography import x509

    from noops.gate.mtls import load_or_create_ca, peer_spiffe_id
    from noops.gate.serving import ServingCerts

    ca = load_or_create_ca(tmp_path / "ca")
    serving = ServingCerts(ca)
    ctx = serving.workload_context()
    assert serving.renew() is False  # fresh: nothing to do
    old = serving._workload_svid
    assert old is not None
    serving._workload_svid = dataclasses.replace(
        old, not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=20))
    assert serving.renew() is True
    assert serving.workload_context() is ctx  # same listener context, new certificate inside

    client_id = ca.issue_svid("a", "web")
    client = ca.client_ssl_context(client_id)
    left, right = socket.socketpair()
    served: list[bytes] = []

    def server() -> None:
        with ctx.wrap_socket(right, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=server)
    thread.start()
    with client.wrap_socket(left, server_hostname="gateway") as tls:
        served.append(tls.getpeercert(binary_form=True) or b"")
        tls.sendall(b"x")
    thread.join(5)
    cert = x509.load_der_x509_certificate(served[0])
    assert peer_spiffe_id(served[0]) == f"spiffe://{ca.trust_domain}/gateway"
    assert cert.serial_number != old.serial
