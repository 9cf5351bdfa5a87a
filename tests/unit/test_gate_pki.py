"""The built-in CA (noops.gate.pki) with real keys, real certificates and real TLS handshakes.

Forgeries are built here with plain ``cryptography``: a second CA that copies our names, leaves
with two URI SANs, wrong EKUs, CA flags, self-signed leaves, names outside the constraints.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from noops.errors import NoopsError
from noops.gate.pki import (
    CertificateAuthority,
    CertificateRejected,
    Issued,
    PkiError,
    needs_rotation,
)

TD = "noops.local"
PASSWORD = "correct horse battery"
UTC = datetime.UTC


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", TD)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _inter_key(ca: CertificateAuthority) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((ca.directory / "intermediate.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _forge(*, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
           sans: list[x509.GeneralName], ekus: list[x509.ObjectIdentifier] | None = None,
           ca: bool = False, cert_sign: bool = False, subject: x509.Name | None = None,
           key: ec.EllipticCurvePrivateKey | None = None, hours: int = 1) -> x509.Certificate:
    """A leaf shaped by the arguments, signed by ``signer`` under the issuer name ``issuer``."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    ku = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                       crl_sign=False, encipher_only=False, decipher_only=False)
    return (
        x509.CertificateBuilder()
        .subject_name(subject or x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "noops")]))
        .issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=hours))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.ExtendedKeyUsage(ekus or [ExtendedKeyUsageOID.CLIENT_AUTH,
                                                      ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(signer, hashes.SHA256())
    )


def _uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


def _reason(ca: CertificateAuthority, data: bytes, **kwargs: Any) -> str:
    with pytest.raises(CertificateRejected) as info:
        ca.verify_client(data, **kwargs)
    assert info.value.http_status == 403
    return str(info.value.reason)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _leaf(issued: Issued) -> x509.Certificate:
    return x509.load_pem_x509_certificates(issued.cert_pem)[0]


# -- the CA on disk ------------------------------------------------------------------------------


def test_create_writes_two_tiers_with_private_keys(ca: CertificateAuthority) -> None:
    assert _mode(ca.directory) == 0o700
    assert _mode(ca.directory / "root.key") == 0o600
    assert _mode(ca.directory / "intermediate.key") == 0o600
    root_bc = ca.root.extensions.get_extension_for_class(x509.BasicConstraints)
    inter_bc = ca.intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca and root_bc.value.path_length == 1
    assert inter_bc.value.ca and inter_bc.value.path_length == 0
    ca.intermediate.verify_directly_issued_by(ca.root)
    root_days = (ca.root.not_valid_after_utc - ca.root.not_valid_before_utc).days
    inter_days = (ca.intermediate.not_valid_after_utc - ca.intermediate.not_valid_before_utc).days
    assert root_days == 3650 and inter_days == 365
    nc = ca.intermediate.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    permitted = nc.value.permitted_subtrees or []
    assert _uri(TD) in permitted
    assert {n.value for n in permitted if isinstance(n, x509.DNSName)} == {TD, "localhost"}
    assert PkiError.exit_code == 12 and issubclass(PkiError, NoopsError)


def test_create_refuses_an_existing_ca_and_load_round_trips(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="already holds a CA"):
        CertificateAuthority.create(ca.directory)
    again = CertificateAuthority.load(ca.directory)
    assert again.trust_domain == TD and again.root == ca.root
    assert again.verify_client(ca.issue_svid("web", "worker").cert_pem).app == "web"


def test_load_refuses_a_key_others_can_read(ca: CertificateAuthority) -> None:
    (ca.directory / "intermediate.key").chmod(0o644)
    with pytest.raises(PkiError, match="chmod 600"):
        CertificateAuthority.load(ca.directory)


def test_load_of_a_missing_ca_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="noops ca init"):
        CertificateAuthority.load(tmp_path / "nothing")


def test_root_key_offline_everything_but_rotation_works(ca: CertificateAuthority) -> None:
    (ca.directory / "root.key").unlink()
    offline = CertificateAuthority.load(ca.directory)
    assert not offline.root_key_online
    svid = offline.issue_svid("web", "worker")
    assert offline.verify_client(svid.cert_pem).spiffe_id == svid.spiffe_id
    bundle = offline.enroll_device("laptop", "alice", password=PASSWORD)
    offline.revoke(svid.serial, "superseded")
    assert x509.load_pem_x509_crl(offline.crl()).get_revoked_certificate_by_serial_number(svid.serial)
    assert bundle
    with pytest.raises(PkiError, match="root key is offline"):
        offline.rotate_intermediate()


def test_rotation_keeps_old_leaves_valid_and_signs_new_ones(ca: CertificateAuthority) -> None:
    old = ca.issue_svid("web", "worker")
    first = ca.intermediate
    ca.rotate_intermediate(dns_names=["example.com"])
    assert ca.intermediate.serial_number != first.serial_number
    new = ca.issue_svid("web", "worker")
    assert ca.verify_client(old.cert_pem).serial == old.serial
    assert CertificateAuthority.load(ca.directory).verify_client(new.cert_pem).serial == new.serial
    assert ca.issue_gateway_cert(["app.example.com"]).serial


# -- issuing -------------------------------------------------------------------------------------


def test_svid_follows_the_x509_svid_profile(ca: CertificateAuthority) -> None:
    now = datetime.datetime(2030, 1, 1, 12, tzinfo=UTC)
    early = CertificateAuthority.create(ca.directory.parent / "early", TD,
                                        now=now - datetime.timedelta(days=1))
    issued = early.issue_svid("web", "worker", now=now)
    leaf = _leaf(issued)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://noops.local/app/web/worker"]
    assert len(list(san)) == 1
    assert issued.spiffe_id == "spiffe://noops.local/app/web/worker"
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc == now + datetime.timedelta(hours=1)
    assert now - datetime.timedelta(minutes=5) < leaf.not_valid_before_utc < now
    assert issued.not_after == leaf.not_valid_after_utc and issued.serial == leaf.serial_number
    assert len(x509.load_pem_x509_certificates(issued.cert_pem)) == 2  # leaf + intermediate
    leaf.verify_directly_issued_by(early.intermediate)


@pytest.mark.parametrize(("app", "process"), [
    ("", "web"), ("a/b", "web"), ("..", "web"), (".", "web"), ("app", "we b"), ("app", "wëb"),
    ("app", "x" * 64), ("app", ".hidden"), ("app", "web?x=1"), ("app", "web#x"), ("app", "%2e%2e"),
])
def test_svid_names_are_validated(ca: CertificateAuthority, app: str, process: str) -> None:
    with pytest.raises(PkiError, match="invalid"):
        ca.issue_svid(app, process)


def test_leaf_never_outlives_the_intermediate(ca: CertificateAuthority) -> None:
    late = ca.intermediate.not_valid_after_utc - datetime.timedelta(minutes=10)
    issued = ca.issue_svid("web", "worker", now=late)
    assert issued.not_after == ca.intermediate.not_valid_after_utc
    with pytest.raises(PkiError, match="rotate"):
        ca.issue_svid("web", "worker", now=late + datetime.timedelta(hours=1))


def test_gateway_serving_cert_and_identity(ca: CertificateAuthority) -> None:
    serving = ca.issue_gateway_cert(["noops.local", "*.apps.noops.local", "127.0.0.1"])
    leaf = _leaf(serving)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["noops.local", "*.apps.noops.local"]
    assert not san.get_values_for_type(x509.UniformResourceIdentifier)
    assert serving.spiffe_id is None
    with pytest.raises(PkiError, match="outside this CA"):
        ca.issue_gateway_cert(["evil.example"])
    with pytest.raises(PkiError, match="outside this CA"):
        ca.issue_gateway_cert(["10.0.0.1"])
    identity = ca.issue_gateway_identity()
    who = ca.verify_client(identity.cert_pem)
    assert (who.kind, who.spiffe_id) == ("gateway", "spiffe://noops.local/gateway")


def test_enroll_device_returns_a_password_protected_pkcs12(ca: CertificateAuthority) -> None:
    bundle = ca.enroll_device("laptop", "alice", password=PASSWORD)
    opened = pkcs12.load_pkcs12(bundle, PASSWORD.encode())
    assert opened.key is not None and opened.cert is not None
    assert [c.certificate for c in opened.additional_certs] == [ca.intermediate, ca.root]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(bundle, None)
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(bundle, b"wrong password")
    cert = opened.cert.certificate
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    who = ca.verify_client(_pem(cert))
    assert (who.kind, who.user, who.device) == ("device", "alice", "laptop")
    assert who.spiffe_id == "spiffe://noops.local/device/alice/laptop"
    [entry] = CertificateAuthority.load(ca.directory).devices()
    assert entry["serial"] == f"{cert.serial_number:x}" and entry["user"] == "alice"
    assert entry["name"] == "laptop" and not entry["revoked"]
    assert datetime.datetime.fromisoformat(entry["not_after"]) == cert.not_valid_after_utc
    assert (cert.not_valid_after_utc - datetime.datetime.now(UTC)).days in (89, 90)
    assert _mode(ca.directory / "registry.json") == 0o600


def test_enroll_device_refuses_short_passwords_and_bad_names(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="at least 8"):
        ca.enroll_device("laptop", "alice", password="")
    with pytest.raises(PkiError, match="invalid user"):
        ca.enroll_device("laptop", "../root", password=PASSWORD)


# -- verify_client: accepted and rejected --------------------------------------------------------


def test_verify_accepts_pem_chain_and_der_leaf(ca: CertificateAuthority) -> None:
    issued = ca.issue_svid("shop", "web")
    who = ca.verify_client(issued.cert_pem)
    assert (who.kind, who.app, who.process, who.serial) == ("workload", "shop", "web", issued.serial)
    der = _leaf(issued).public_bytes(serialization.Encoding.DER)
    assert ca.verify_client(der).spiffe_id == issued.spiffe_id


def test_expired_and_not_yet_valid_are_rejected(ca: CertificateAuthority) -> None:
    issued = ca.issue_svid("web", "worker", ttl_s=600)
    later = issued.not_after + datetime.timedelta(seconds=1)
    assert _reason(ca, issued.cert_pem, now=later) == "expired"
    earlier = _leaf(issued).not_valid_before_utc - datetime.timedelta(seconds=1)
    assert _reason(ca, issued.cert_pem, now=earlier) == "not-yet-valid"
    assert ca.verify_client(issued.cert_pem, now=issued.not_after).serial == issued.serial


def test_revoked_serial_is_rejected_at_once_everywhere(ca: CertificateAuthority) -> None:
    issued = ca.issue_svid("web", "worker")
    other_process_view = CertificateAuthority.load(ca.directory)
    assert other_process_view.verify_client(issued.cert_pem)
    assert ca.revoke(issued.serial, "key_compromise") == [issued.serial]
    assert ca.is_revoked(issued.serial)
    assert _reason(ca, issued.cert_pem) == "revoked"
    assert _reason(other_process_view, issued.cert_pem) == "revoked"


def test_revoke_a_device_by_name(ca: CertificateAuthority) -> None:
    bundle = ca.enroll_device("phone", "bob", password=PASSWORD)
    cert = pkcs12.load_pkcs12(bundle, PASSWORD.encode()).cert
    assert cert is not None
    assert ca.revoke("bob/phone", "lost") == [cert.certificate.serial_number]
    assert _reason(ca, _pem(cert.certificate)) == "revoked"
    assert ca.devices()[0]["revoked"]
    with pytest.raises(PkiError, match="no enrolled device"):
        ca.revoke("bob/tablet", "lost")


def test_revoked_serials_is_the_same_object_until_the_registry_changes(ca: CertificateAuthority) -> None:
    """The gatekeeper drops every reused decision when this object changes (``is``): with no
    registry file yet (nothing enrolled or revoked) it must not change either."""
    assert not (ca.directory / "registry.json").exists()
    first = ca.revoked_serials()
    assert ca.revoked_serials() is first and first == frozenset()
    issued = ca.issue_svid("web", "worker")
    ca.revoke(issued.serial, "keyCompromise")
    changed = ca.revoked_serials()
    assert changed is not first and changed == {issued.serial}
    assert ca.revoked_serials() is changed


def test_crl_is_signed_and_lists_revoked_serials(ca: CertificateAuthority) -> None:
    issued = ca.issue_svid("web", "worker")
    ca.revoke(issued.serial, "keyCompromise")
    crl = x509.load_pem_x509_crl(ca.crl())
    assert crl.is_signature_valid(ca.intermediate.public_key())
    assert crl.issuer == ca.intermediate.subject
    entry = crl.get_revoked_certificate_by_serial_number(issued.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        is x509.ReasonFlags.key_compromise
    assert (ca.directory / "crl.pem").read_bytes().startswith(b"-----BEGIN X509 CRL")


def test_wrong_eku_is_rejected(ca: CertificateAuthority) -> None:
    serving = ca.issue_gateway_cert(["localhost"])
    assert _reason(ca, serving.cert_pem) == "eku"
    server_only = _forge(issuer=ca.intermediate.subject, signer=_inter_key(ca),
                         sans=[_uri("spiffe://noops.local/app/web/worker")],
                         ekus=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert _reason(ca, _pem(server_only)) == "eku"


def test_foreign_ca_copying_our_names_is_rejected(ca: CertificateAuthority, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create(tmp_path / "rogue", TD)
    assert rogue.root.subject == ca.root.subject
    assert rogue.intermediate.subject == ca.intermediate.subject
    forged = rogue.issue_svid("web", "worker")
    assert _reason(ca, forged.cert_pem) == "untrusted-issuer"
    # Sending our real intermediate along does not help: only our own intermediates are used.
    assert _reason(ca, _pem(_leaf(forged)) + _pem(ca.intermediate)) == "untrusted-issuer"


def test_two_uri_sans_are_rejected(ca: CertificateAuthority) -> None:
    cert = _forge(issuer=ca.intermediate.subject, signer=_inter_key(ca),
                  sans=[_uri("spiffe://noops.local/app/web/worker"),
                        _uri("spiffe://noops.local/gateway")])
    assert _reason(ca, _pem(cert)) == "san"
    assert _reason(ca, _pem(_forge(issuer=ca.intermediate.subject, signer=_inter_key(ca),
                                   sans=[x509.DNSName("localhost")]))) == "san"


def test_self_signed_leaf_is_rejected(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [_uri("spiffe://noops.local/gateway")]
    plain = _forge(issuer=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "noops")]),
                   signer=key, key=key, sans=sans)
    assert _reason(ca, _pem(plain)) == "untrusted-issuer"
    # claiming our intermediate's name as issuer does not make the signature ours
    posing = _forge(issuer=ca.intermediate.subject, signer=key, key=key, sans=sans)
    assert _reason(ca, _pem(posing)) == "untrusted-issuer"


def test_ca_certificates_are_not_leaves(ca: CertificateAuthority) -> None:
    assert _reason(ca, _pem(ca.intermediate)) == "not-a-leaf"
    assert _reason(ca, _pem(ca.root)) == "not-a-leaf"
    as_ca = _forge(issuer=ca.intermediate.subject, signer=_inter_key(ca), ca=True,
                   sans=[_uri("spiffe://noops.local/app/web/worker")])
    assert _reason(ca, _pem(as_ca)) == "not-a-leaf"
    cert_sign = _forge(issuer=ca.intermediate.subject, signer=_inter_key(ca), cert_sign=True,
                       sans=[_uri("spiffe://noops.local/app/web/worker")])
    assert _reason(ca, _pem(cert_sign)) == "key-usage"


def test_unknown_critical_extension_is_rejected(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    leaf = _leaf(ca.issue_svid("web", "worker"))
    builder = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1)))
    for ext in leaf.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    cert = builder.add_extension(unknown, critical=True).sign(_inter_key(ca), hashes.SHA256())
    assert _reason(ca, _pem(cert)) == "critical-extension"


@pytest.mark.parametrize("uri", [
    "https://noops.local/app/web/worker", "spiffe://other.local/app/web/worker",
    "spiffe://noops.local", "spiffe://noops.local/", "spiffe://noops.local/app/web/worker?x=1",
    "spiffe://noops.local/app/web/worker#f", "spiffe://noops.local:443/app/web/worker",
    "spiffe://u@noops.local/app/web/worker", "spiffe://noops.local/app/../worker",
    "spiffe://noops.local/app/web", "spiffe://noops.local/admin/x/y",
    "spiffe://noops.local/app//worker", "spiffe://NOOPS.LOCAL/app/web/worker",
])
def test_bad_spiffe_ids_are_rejected(ca: CertificateAuthority, uri: str) -> None:
    cert = _forge(issuer=ca.intermediate.subject, signer=_inter_key(ca), sans=[_uri(uri)])
    assert _reason(ca, _pem(cert)) == "spiffe-id"


def test_dns_san_outside_the_name_constraints_is_rejected(ca: CertificateAuthority) -> None:
    cert = _forge(issuer=ca.intermediate.subject, signer=_inter_key(ca),
                  sans=[_uri("spiffe://noops.local/app/web/worker"), x509.DNSName("bank.example")])
    assert _reason(ca, _pem(cert)) == "name-constraints"
    inside = _forge(issuer=ca.intermediate.subject, signer=_inter_key(ca),
                    sans=[_uri("spiffe://noops.local/app/web/worker"), x509.DNSName("a.localhost")])
    assert ca.verify_client(_pem(inside)).app == "web"


def test_expect_prefix_narrows_who_is_accepted(ca: CertificateAuthority) -> None:
    svid = ca.issue_svid("web", "worker")
    assert _reason(ca, svid.cert_pem, expect_prefix="spiffe://noops.local/device/") == \
        "unexpected-id"
    assert ca.verify_client(svid.cert_pem, expect_prefix="spiffe://noops.local/app/web/")


def test_garbage_is_malformed(ca: CertificateAuthority) -> None:
    assert _reason(ca, b"not a certificate") == "malformed"
    assert _reason(ca, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n") == \
        "malformed"


def test_verify_server_pins_the_exact_identity(ca: CertificateAuthority) -> None:
    svid = ca.issue_svid("web", "worker")
    assert ca.verify_server(svid.cert_pem, "spiffe://noops.local/app/web/worker").kind == "workload"
    with pytest.raises(CertificateRejected) as info:
        ca.verify_server(svid.cert_pem, "spiffe://noops.local/app/web/work")
    assert info.value.reason == "unexpected-id"
    device = pkcs12.load_pkcs12(ca.enroll_device("pc", "eve", password=PASSWORD), PASSWORD.encode())
    assert device.cert is not None
    with pytest.raises(CertificateRejected) as info:
        ca.verify_server(_pem(device.cert.certificate), "spiffe://noops.local/device/eve/pc")
    assert info.value.reason == "eku"


# -- rotation and bundle -------------------------------------------------------------------------


def test_needs_rotation_at_half_life() -> None:
    not_after = datetime.datetime(2030, 1, 1, 12, tzinfo=UTC)
    half = not_after - datetime.timedelta(minutes=30)
    assert not needs_rotation(not_after, 3600, half - datetime.timedelta(seconds=1))
    assert needs_rotation(not_after, 3600, half)
    assert needs_rotation(not_after, 3600, not_after + datetime.timedelta(hours=1))
    with pytest.raises(PkiError):
        needs_rotation(not_after, 0, half)


def test_export_ca_bundle_is_root_then_intermediate(ca: CertificateAuthority) -> None:
    assert x509.load_pem_x509_certificates(ca.export_ca_bundle()) == [ca.root, ca.intermediate]


# -- real TLS ------------------------------------------------------------------------------------


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    """Run one TLS handshake over a socket pair; the server echoes one message."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    out: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                out["client_cert"] = tls.getpeercert(binary_form=True)
                out["version"] = tls.version()
                tls.sendall(tls.recv(5))
        except (ssl.SSLError, OSError) as exc:
            out["server_error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=None) as tls:
            out["server_cert"] = tls.getpeercert(binary_form=True)
            tls.sendall(b"hello")
            out["echo"] = tls.recv(5)
    except (ssl.SSLError, OSError) as exc:
        out["client_error"] = exc
    finally:
        thread.join(10)
        right.close()
    return out


def test_mtls_handshake_between_instance_and_gateway(ca: CertificateAuthority) -> None:
    instance = ca.issue_svid("web", "worker")
    gateway = ca.issue_gateway_identity()
    out = _handshake(ca.server_ssl_context(instance), ca.client_ssl_context(gateway))
    assert out.get("echo") == b"hello", out
    assert out["version"] == "TLSv1.3"
    assert ca.verify_client(out["client_cert"]).kind == "gateway"
    assert ca.verify_server(out["server_cert"], instance.spiffe_id or "").app == "web"


def test_handshake_fails_without_or_with_a_foreign_client_cert(ca: CertificateAuthority,
                                                               tmp_path: Path) -> None:
    server = ca.server_ssl_context(ca.issue_svid("web", "worker"))
    out = _handshake(server, ca.client_ssl_context(None))
    assert "did not return a certificate" in str(out.get("server_error")) and "echo" not in out
    rogue = CertificateAuthority.create(tmp_path / "rogue", TD)
    foreign_client = ca.client_ssl_context(rogue.issue_gateway_identity())
    out = _handshake(server, foreign_client)
    assert "unable to get local issuer" in str(out.get("server_error")) and "echo" not in out


def test_client_refuses_a_foreign_server(ca: CertificateAuthority, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create(tmp_path / "rogue", TD)
    out = _handshake(rogue.server_ssl_context(rogue.issue_svid("web", "worker")),
                     ca.client_ssl_context(ca.issue_gateway_identity()))
    assert isinstance(out.get("client_error"), ssl.SSLCertVerificationError)


def test_revocation_after_the_context_is_enforced_by_verify_client(
        ca: CertificateAuthority) -> None:
    server = ca.server_ssl_context(ca.issue_svid("web", "worker"))
    gateway = ca.issue_gateway_identity()
    client = ca.client_ssl_context(gateway)
    ca.revoke(gateway.serial, "key_compromise")
    out = _handshake(server, client)
    assert out.get("echo") == b"hello"  # OpenSSL alone does not know yet ...
    with pytest.raises(CertificateRejected) as info:  # ... the post-handshake check does
        ca.verify_client(out["client_cert"])
    assert info.value.reason == "revoked"


def test_check_crl_makes_openssl_refuse_revoked_clients(ca: CertificateAuthority) -> None:
    revoked = ca.issue_gateway_identity()
    ca.revoke(revoked.serial, "key_compromise")
    server = ca.server_ssl_context(ca.issue_svid("web", "worker"), check_crl=True)
    out = _handshake(server, ca.client_ssl_context(revoked))
    assert "certificate revoked" in str(out.get("server_error")) and "echo" not in out
    good = _handshake(server, ca.client_ssl_context(ca.issue_gateway_identity()))
    assert good.get("echo") == b"hello", good


def test_tls12_clients_are_refused(ca: CertificateAuthority) -> None:
    client = ca.client_ssl_context(ca.issue_gateway_identity())
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    out = _handshake(ca.server_ssl_context(ca.issue_svid("web", "worker")), client)
    assert "server_error" in out and "echo" not in out
