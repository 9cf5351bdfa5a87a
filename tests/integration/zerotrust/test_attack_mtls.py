"""Attack checklist §8, *mTLS and the built-in CA*, gateway side, against the running front door.

* client certificates rejected (handshake refused, or no device/workload identity: 403 and the app
  sees nothing): none, expired, not yet valid, wrong CA, self-signed, leaf with ``cA=true`` or
  ``keyCertSign``, two URI SANs, non-``spiffe`` scheme, wrong trust domain, root-path ID, query
  in the ID, no clientAuth EKU, revoked — on the public port (device route) and on the workload
  socket (service route);
* certificate rotation mid-connection: a re-enrolled device and a re-issued app SVID keep working
  without dropping the client's connection;
* TLS below 1.2 refused on the public port, below 1.3 on the workload socket;
* upstream verification cannot be skipped and the upstream SPIFFE ID is pinned: wrong ID, no ID
  pinned, another CA's certificate or a plaintext app → 502 and the app gets no request;
* a certificate whose identity differs from the attested one counts for nothing (a device
  certificate of another user). The CA has no CSR endpoint: identities come from the CA itself
  (instance side: tests/integration/runtime).
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from zt_harness import EchoApp, Gateway, RawConnection, raw_get, route_endpoint, set_endpoint_spiffe, wait_for

from noops.gate.mtls import load_or_create_ca

POLICY = """
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true

[[route]]
id = "device"
host = "echo.localhost"
path = "/device"
device_cert = "required"

[[route]]
id = "svc"
host = "other.localhost"
path = "/svc"
allow_spiffe = ["spiffe://noops.local/app/echo/web"]
"""

NOW = datetime.datetime.now(datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def build(
    gw: Gateway,
    name: str,
    *,
    uris: list[str],
    ca: bool = False,
    key_cert_sign: bool = False,
    ekus: tuple[Any, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    issuer: tuple[Any, Any] | None = None,
    self_signed: bool = False,
) -> tuple[Path, Path]:
    """A leaf made by the test, signed by the gateway's intermediate unless told otherwise."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_cert, issuer_key = issuer or (gw.ca.intermediate, gw.ca._key)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "noops")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if self_signed else issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - HOUR)
        .not_valid_after(not_after or NOW + HOUR)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    )
    if not self_signed:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    cert = builder.sign(key if self_signed else issuer_key, hashes.SHA256())
    chain = cert.public_bytes(serialization.Encoding.PEM)
    if not self_signed:
        chain += issuer_cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = gw.home / f"{name}.crt", gw.home / f"{name}.key"
    cert_path.write_bytes(chain)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def env(gw: Gateway) -> dict[str, Any]:
    gw.apply_policy(POLICY)
    gw.add_user("mia")
    gw.add_user("max")
    other_ca = load_or_create_ca(gw.home / "other-ca")
    return {"cookie": gw.session("mia", {"password", "totp"}), "other_ca": other_ca}


def _device_request(gw: Gateway, cert: tuple[Path, Path] | None, cookie: str) -> int | str:
    """Status of GET /device with ``cert``, or "handshake" when TLS refused it."""
    try:
        with RawConnection(gw, cert=cert) as c:
            r = c.request(raw_get("/device", cookie=cookie, headers=[("Accept", "application/json")]))
    except (ssl.SSLError, ConnectionError):
        return "handshake"
    return "handshake" if r is None else r.status


TD = "spiffe://noops.local"
DEV = f"{TD}/device/mia/laptop"

BAD_DEVICE_CERTS: dict[str, dict[str, Any]] = {
    "expired": {"uris": [DEV], "not_before": NOW - 3 * HOUR, "not_after": NOW - HOUR},
    "not_yet_valid": {"uris": [DEV], "not_before": NOW + HOUR, "not_after": NOW + 3 * HOUR},
    "self_signed": {"uris": [DEV], "self_signed": True},
    "ca_true": {"uris": [DEV], "ca": True},
    "key_cert_sign": {"uris": [DEV], "key_cert_sign": True},
    "two_uri_sans": {"uris": [DEV, f"{TD}/device/max/laptop"]},
    "non_spiffe_scheme": {"uris": ["https://noops.local/device/mia/laptop"]},
    "wrong_trust_domain": {"uris": ["spiffe://evil.local/device/mia/laptop"]},
    "root_path_id": {"uris": [TD]},
    "root_slash_id": {"uris": [TD + "/"]},
    "query_in_id": {"uris": [DEV + "?admin=1"]},
    "fragment_in_id": {"uris": [DEV + "#x"]},
    "dot_segments": {"uris": [f"{TD}/device/mia/../max/laptop"]},
    "no_client_auth_eku": {"uris": [DEV], "ekus": (ExtendedKeyUsageOID.SERVER_AUTH,)},
}


def test_a_well_formed_certificate_from_the_test_builder_is_accepted(
    gw: Gateway, env: dict[str, Any]
) -> None:
    assert _device_request(gw, build(gw, "good", uris=[DEV]), env["cookie"]) == 200
    assert _device_request(gw, None, env["cookie"]) == 403  # no client certificate


@pytest.mark.parametrize("case", sorted(BAD_DEVICE_CERTS))
def test_bad_device_certificates_rejected(gw: Gateway, env: dict[str, Any], case: str) -> None:
    before = len(gw.apps["echo"].seen)
    outcome = _device_request(gw, build(gw, case, **BAD_DEVICE_CERTS[case]), env["cookie"])
    assert outcome in ("handshake", 403), (case, outcome)
    assert len(gw.apps["echo"].seen) == before


def test_wrong_ca_rejected(gw: Gateway, env: dict[str, Any]) -> None:
    other = env["other_ca"]
    cert = build(gw, "wrong-ca", uris=[DEV], issuer=(other.intermediate, other._key))
    assert _device_request(gw, cert, env["cookie"]) in ("handshake", 403)


def test_revoked_device_rejected_and_not_renewable_by_itself(gw: Gateway, env: dict[str, Any]) -> None:
    cert, key, serial = gw.device("phone", "mia")
    assert _device_request(gw, (cert, key), env["cookie"]) == 200
    gw.ca.revoke(serial, "key_compromise")
    assert _device_request(gw, (cert, key), env["cookie"]) in ("handshake", 403)
    assert gw.ca.is_revoked(serial)


def test_revoked_device_refused_on_its_open_connection_within_the_reuse_second(
        gw: Gateway, env: dict[str, Any]) -> None:
    """An allow decision is reused for a second on a kept-alive connection; revoking the
    device certificate in that second must still refuse the next request on that connection."""
    cert, key, serial = gw.device("tablet", "mia")
    request = raw_get("/device", cookie=env["cookie"], headers=[("Accept", "application/json")])
    with RawConnection(gw, cert=(cert, key)) as c:
        first = c.request(request)
        assert first is not None and first.status == 200
        gw.ca.revoke(serial, "key_compromise")
        time.sleep(0.2)  # > the gateway's revocation poll (50 ms), < the 1 s decision reuse
        again = c.request(request)
        assert again is not None and again.status == 403


def test_device_certificate_expiring_on_an_open_connection_ends_its_reused_decision(
        gw: Gateway, env: dict[str, Any]) -> None:
    """A kept-alive connection's device certificate that expires counts for nothing from then on,
    even for a request the gateway allowed less than a second before (its decision is reused)."""
    expires = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=2)
    cert = build(gw, "expiring", uris=[DEV], not_after=expires)
    request = raw_get("/device", cookie=env["cookie"], headers=[("Accept", "application/json")])
    seen: list[tuple[float, float, int]] = []
    with RawConnection(gw, cert=cert) as c:
        while time.time() < expires.timestamp() + 0.5:
            sent = time.time()
            r = c.request(request)
            assert r is not None
            seen.append((sent, time.time(), r.status))
            time.sleep(0.05)
    end = expires.timestamp()
    assert [s for sent, done, s in seen if done < end - 0.05] and all(
        s == 200 for sent, done, s in seen if done < end - 0.05)
    after = [s for sent, done, s in seen if sent > end + 0.05]
    assert after and set(after) == {403}


def test_device_certificate_of_another_user_counts_for_nothing(gw: Gateway, env: dict[str, Any]) -> None:
    cert, key, _ = gw.device("laptop", "max")
    assert _device_request(gw, (cert, key), env["cookie"]) == 403  # mia's session, max's device


def test_device_rotation_mid_connection(gw: Gateway, env: dict[str, Any]) -> None:
    cert_a, key_a, serial_a = gw.device("desk", "mia")
    with RawConnection(gw, cert=(cert_a, key_a)) as old:
        first = old.request(raw_get("/device", cookie=env["cookie"]))
        assert first is not None and first.status == 200
        cert_b, key_b, _ = gw.device("desk", "mia")  # re-enrolled: a new certificate
        assert _device_request(gw, (cert_b, key_b), env["cookie"]) == 200
        again = old.request(raw_get("/device", cookie=env["cookie"]))
        assert again is not None and again.status == 200  # the open connection keeps working
        gw.ca.revoke(serial_a, "superseded")

        def refused() -> bool:
            r = old.request(
                raw_get("/device", cookie=env["cookie"], headers=[("Accept", "application/json")])
            )
            assert r is not None
            return r.status == 403

        # until the old one is revoked: then refused on the same connection within the feed's tick
        assert wait_for(refused, 2.0) is not None
    assert _device_request(gw, (cert_b, key_b), env["cookie"]) == 200


def test_app_svid_rotation_mid_connection(gw: Gateway, env: dict[str, Any]) -> None:
    app = gw.apps["echo"]
    with RawConnection(gw) as c:
        r = c.request(raw_get("/before", cookie=env["cookie"]))
        assert r is not None and r.status == 200
        fresh = gw.ca.issue_svid("echo", "web", ttl_s=600)
        cert, key = gw.write_issued(fresh, "echo-rotated")
        app.ctx.load_cert_chain(str(cert), str(key))  # new handshakes present the new SVID
        import time

        time.sleep(2.0)  # idle upstream connections (1.5 s) are closed: the next one is new
        r = c.request(raw_get("/after", cookie=env["cookie"]))
        assert r is not None and r.status == 200 and r.json()["target"] == "/after"


def test_tls_below_1_2_refused_on_the_public_port(gw: Gateway) -> None:
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = gw.tls()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point of the test
            try:
                ctx.minimum_version = version
                ctx.maximum_version = version
            except (ValueError, ssl.SSLError):
                continue
            with pytest.raises((ssl.SSLError, ConnectionError)):
                RawConnection(gw, ctx=ctx).close()
    ok = gw.tls(maximum=ssl.TLSVersion.TLSv1_2)
    with RawConnection(gw, ctx=ok) as c:
        assert c.sock.version() == "TLSv1.2"


# -- the workload socket ----------------------------------------------------------------------------


def _workload(
    gw: Gateway, cert: tuple[Path, Path] | None, *, maximum: ssl.TLSVersion | None = None
) -> int | str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=gw.ca.export_ca_bundle().decode())
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if maximum is not None:
        ctx.maximum_version = maximum
    try:
        with RawConnection(
            gw, host="other.localhost", ctx=ctx, sock_path=str(gw.home / "run" / "gateway.sock")
        ) as c:
            r = c.request(raw_get("/svc", host="other.localhost", headers=[("Accept", "application/json")]))
    except (ssl.SSLError, ConnectionError, OSError):
        return "handshake"
    return "handshake" if r is None else r.status


def test_workload_socket_requires_a_valid_svid(gw: Gateway, env: dict[str, Any]) -> None:
    before = len(gw.apps["other"].seen)
    good = gw.write_issued(gw.ca.issue_svid("echo", "web"), "echo-client")
    assert _workload(gw, good) == 200
    seen = gw.apps["other"].seen[before:]
    assert len(seen) == 1  # positive control
    assert _workload(gw, None) == "handshake"
    assert _workload(gw, good, maximum=ssl.TLSVersion.TLSv1_2) == "handshake"
    stranger = gw.write_issued(gw.ca.issue_svid("stranger", "web"), "stranger-client")
    assert _workload(gw, stranger) == 403  # valid SVID, not allowed on this route
    # a rejected certificate leaves the caller without identity (401) or fails the handshake
    wid = f"{TD}/app/echo/web"
    bad = {
        "two_uri_sans": {"uris": [wid, f"{TD}/app/admin/web"]},
        "query_in_id": {"uris": [wid + "?x=1"]},
        "wrong_trust_domain": {"uris": ["spiffe://evil.local/app/echo/web"]},
        "ca_true": {"uris": [wid], "ca": True},
        "no_client_auth_eku": {"uris": [wid], "ekus": (ExtendedKeyUsageOID.SERVER_AUTH,)},
        "expired": {"uris": [wid], "not_before": NOW - 3 * HOUR, "not_after": NOW - HOUR},
        "self_signed": {"uris": [wid], "self_signed": True},
    }
    for case, kw in bad.items():
        assert _workload(gw, build(gw, f"wl-{case}", **kw)) in ("handshake", 401, 403), case
    other = env["other_ca"]
    assert _workload(
        gw,
        build(gw, "wl-other-ca", uris=[wid], issuer=(other.intermediate, other._key)),
    ) in ("handshake", 401, 403)
    assert len(gw.apps["other"].seen) == before + 1


# -- upstream: verification pinned, never skipped ---------------------------------------------------


def _get(gw: Gateway, app: str, cookie: str) -> int:
    with RawConnection(gw, host=f"{app}.localhost") as c:
        r = c.request(
            raw_get("/up", host=f"{app}.localhost", cookie=cookie, headers=[("Accept", "application/json")])
        )
    assert r is not None
    return r.status


def test_upstream_with_another_spiffe_id_is_502(gw: Gateway, env: dict[str, Any]) -> None:
    app = gw.add_app("wrongid", spiffe_id="spiffe://noops.local/app/wrong/web")
    assert _get(gw, "wrongid", env["cookie"]) == 502
    assert app.seen == []
    set_endpoint_spiffe(gw, "wrongid", app.spiffe_id)  # positive control: the right pin works
    assert _get(gw, "wrongid", env["cookie"]) == 200 and len(app.seen) == 1


def test_upstream_without_a_pinned_id_is_502(gw: Gateway, env: dict[str, Any]) -> None:
    app = gw.add_app("nopin")
    set_endpoint_spiffe(gw, "nopin", "")
    assert _get(gw, "nopin", env["cookie"]) == 502
    assert app.seen == []


def test_upstream_from_another_ca_is_502(gw: Gateway, env: dict[str, Any]) -> None:
    other = env["other_ca"]
    app = EchoApp(other, gw.home, "foreign")  # same trust domain and ID, a CA the gateway does not trust
    gw.apps["foreign"] = app
    route_endpoint(gw, "foreign", app.path, app.spiffe_id)
    assert _get(gw, "foreign", env["cookie"]) == 502
    assert app.seen == []


def test_plaintext_upstream_is_never_spoken_to_in_clear(gw: Gateway, env: dict[str, Any]) -> None:
    received: list[bytes] = []
    path = str(gw.home / "plain.sock")
    loop = asyncio.new_event_loop()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.append(await asyncio.wait_for(reader.read(4096), 2))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = loop.run_until_complete(asyncio.start_unix_server(serve, path))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        route_endpoint(gw, "plain", path, "spiffe://noops.local/app/plain/web")
        assert _get(gw, "plain", env["cookie"]) == 502
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert received, "the gateway never dialled the endpoint"
    assert all(not chunk.startswith((b"GET", b"POST")) for chunk in received)  # a TLS hello, no request
    assert all(b"/up" not in chunk for chunk in received)
