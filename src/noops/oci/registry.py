"""Client for the OCI Distribution API (``/v2/``): push, pull and inspect images in a registry.

Push works the way ggcr's ``remote/write.go`` does: each blob (config and layers) is checked with
``HEAD`` and skipped when the repository has it, mounted from another repository of the same
registry when this store remembers pushing or pulling it there (zero bytes sent), and uploaded
otherwise (``POST`` then one streaming ``PUT``). The manifest goes last, so a failed push never
leaves a tag pointing at missing blobs. Pull verifies the digest of everything it fetches and
stores nothing under a tag until every blob is in place.

Auth (distribution ``spec/auth/token.md``): every session starts anonymous. A 401's
``WWW-Authenticate`` picks ``Basic`` (retry with credentials) or ``Bearer`` (fetch a token from the
realm for the scopes needed so far, cache it per scope set, retry). Credentials come from the caller
or from the first auth file naming the host (see :func:`find_credentials`). Passwords and tokens
never appear in messages.

Every failure is a :class:`~noops.errors.RegistryError` that says what went wrong and what to do;
httpx errors are translated here, with ``raise ... from exc``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import platform as _platform
import re
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from noops.errors import RegistryError, UsageError
from noops.oci.image import Image
from noops.oci.model import DOCKER_LIST, DOCKER_MANIFEST, INDEX, MANIFEST, Descriptor, sha256_digest
from noops.oci.reference import Reference, parse_reference
from noops.oci.store import ImageStore

__all__ = [
    "Credentials",
    "Progress",
    "PushResult",
    "find_credentials",
    "login",
    "pull",
    "push",
    "remote_image",
]

Credentials = tuple[str, str]
"""``(user, password)``."""

Progress = Callable[[str, str, int, int], None]
"""Called as ``progress(digest, status, done_bytes, total_bytes)``; ``status`` is ``skipped``,
``mounted``, ``uploading`` (once per chunk sent), ``uploaded`` or ``manifest`` (pushed last)."""

_MANIFESTS = (MANIFEST, DOCKER_MANIFEST)
_INDEXES = (INDEX, DOCKER_LIST)
_CHUNK = 1 << 20
# Seconds per connect / per read or write of one chunk, not per blob: large blobs may take longer.
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}
_LOGIN_HINT = "or set credentials in $REGISTRY_AUTH_FILE or ~/.docker/config.json"


def _quiet(digest: str, status: str, done: int, total: int) -> None:
    """The default :data:`Progress`: report nothing."""


@dataclass
class PushResult:
    """What :func:`push` did: ``reference`` is ``registry/repo[:tag]@digest``; the lists hold the
    blob digests skipped (already there), mounted (from another repository) and uploaded."""

    digest: str
    reference: str
    uploaded: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def find_credentials(registry: str, environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """Credentials for ``registry`` from the first auth file that names it, else None.

    Files, in order: ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
    ``$DOCKER_CONFIG/config.json`` or ``$HOME/.docker/config.json``; entries are
    ``auths[host].auth`` = base64 ``user:password`` (keys may carry a scheme or a path). Credential
    helpers (``credsStore``) are not consulted. A malformed file raises RegistryError.
    """
    docker = environ.get("DOCKER_CONFIG") or (
        str(Path(environ["HOME"]) / ".docker") if environ.get("HOME") else "")
    candidates = [
        (environ.get("REGISTRY_AUTH_FILE"), ""),
        (environ.get("XDG_RUNTIME_DIR"), "containers/auth.json"),
        (docker, "config.json"),
    ]
    want = _auth_key(registry)
    for path in (Path(base) / rel for base, rel in candidates if base):
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise RegistryError(
                f"cannot read registry credentials from {path} ({exc.__class__.__name__}): "
                "fix or remove the file"
            ) from exc
        auths = data.get("auths") if isinstance(data, dict) else None
        for key, entry in (auths if isinstance(auths, dict) else {}).items():
            if _auth_key(key) == want and isinstance(entry, dict) and entry.get("auth"):
                try:
                    user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, TypeError) as exc:
                    raise RegistryError(
                        f"the credentials for {key} in {path} are not base64 user:password: "
                        "log in again"
                    ) from exc
                if sep:
                    return user, password
    return None


def push(store: ImageStore, local_ref: str, remote_ref: str, *, insecure: bool = False,
         credentials: Credentials | None = None, progress: Progress | None = None,
         environ: Mapping[str, str] = os.environ) -> PushResult:
    """Push the stored image ``local_ref`` to ``remote_ref`` (``host[:port]/repo[:tag|@digest]``).

    Blobs go first (skipped, mounted or streamed from the store's files), the manifest last with
    its exact stored bytes, so the registry's digest equals the local one (checked). On failure
    the remote tag is untouched. ``insecure`` means plain HTTP; otherwise HTTPS verified with the
    system CA bundle. Auth uses ``credentials``, else :func:`find_credentials` over ``environ``,
    only once the registry asks for it (the same holds for :func:`pull` and :func:`remote_image`).
    """
    image = store.image(local_ref)
    ref = parse_reference(remote_ref)
    if ref.digest and ref.digest != image.digest:
        raise UsageError(f"{remote_ref} names digest {ref.digest} but {local_ref} is "
                         f"{image.digest}: push to a tag instead")
    raw = store.read_blob(image.digest)
    media_type = str(image.manifest.get("mediaType") or image.descriptor.media_type)
    result = PushResult(image.digest, str(Reference(ref.registry, ref.repository, ref.tag,
                                                    image.digest)))
    blobs = {d.digest: d for d in [Descriptor.from_json(image.manifest["config"]), *image.layers]}
    with _Session(ref, insecure, credentials, environ, f"push of {local_ref}", push=True) as s:
        known, pushed = _known_blobs(store, s.host), {}
        try:
            for desc in blobs.values():
                _push_blob(s, store, desc, known.get(desc.digest), result, progress)
                pushed[desc.digest] = s.repo
        finally:
            _remember_blobs(store, s.host, pushed)
        resp = s.send("PUT", s.url(f"manifests/{ref.reference}"), ok=(200, 201),
                      headers={"Content-Type": media_type}, body=lambda: raw)
        returned = resp.headers.get("Docker-Content-Digest", "")
        if returned.startswith("sha256:") and returned != image.digest:
            raise RegistryError(f"registry {s.host} stored the manifest of {local_ref} as "
                                f"{returned}, not {image.digest}: it rewrote the manifest; use "
                                "another registry or push by digest")
    (progress or _quiet)(image.digest, "manifest", len(raw), len(raw))
    return result


def pull(remote_ref: str, store: ImageStore, *, tag_as: str | None = None, insecure: bool = False,
         credentials: Credentials | None = None, platform: str | None = None,
         environ: Mapping[str, str] = os.environ) -> Descriptor:
    """Fetch ``remote_ref`` into ``store``; return the stored manifest's descriptor.

    An index (manifest list) resolves to the ``platform`` entry (``os/arch``, default linux and
    the host's architecture); only that manifest is stored. Every blob's digest and size is
    verified; layers already stored are not downloaded again; each layer is recorded under its
    diffID so builds can reuse it. Tagged ``tag_as`` or the remote ``name:tag`` (a reference by
    digest alone and no ``tag_as`` leaves the image untagged) only after all blobs are stored.
    """
    ref = parse_reference(remote_ref)
    with _Session(ref, insecure, credentials, environ, f"pull of {ref}", push=False) as s:
        desc, raw, manifest = _fetch_manifest(s, platform)
        config_desc = Descriptor.from_json(manifest["config"])
        config_raw = _fetch_small_blob(s, config_desc)
        layers = [Descriptor.from_json(d) for d in manifest.get("layers", [])]
        diff_ids = _json_object(config_raw, s).get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(layers):
            raise RegistryError(f"{ref} is malformed: {len(layers)} layers but {len(diff_ids)} "
                                "diff_ids in its config; ask its publisher to rebuild it")
        for layer in layers:
            if not store.has_blob(layer.digest):
                _download(s, store, layer)
        store.put_bytes(config_raw, config_desc.media_type)
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            store.record_layer(diff_id, layer)
        stored = store.put_bytes(raw, desc.media_type)
        _remember_blobs(store, s.host, {d.digest: s.repo for d in [config_desc, *layers]})
    name = tag_as or (f"{ref.name}:{ref.tag}" if ref.tag else None)
    if name:
        store.tag(name, stored)
    return stored


def remote_image(remote_ref: str, *, insecure: bool = False,
                 credentials: Credentials | None = None, platform: str | None = None,
                 environ: Mapping[str, str] = os.environ) -> Image:
    """Manifest, config and digest of ``remote_ref`` (index resolved as in :func:`pull`),
    verified, without downloading layers or storing anything."""
    ref = parse_reference(remote_ref)
    with _Session(ref, insecure, credentials, environ, f"inspection of {ref}", push=False) as s:
        desc, _raw, manifest = _fetch_manifest(s, platform)
        config = _json_object(_fetch_small_blob(s, Descriptor.from_json(manifest["config"])), s)
    return Image(desc, manifest, config)


# -- one registry session: URLs, auth, error translation ---------------------------------------
class _Session:
    def __init__(self, ref: Reference, insecure: bool, credentials: Credentials | None,
                 environ: Mapping[str, str], what: str, *, push: bool) -> None:
        if not ref.registry:
            raise UsageError(f"{ref} names no registry: write it as HOST[:PORT]/NAME[:TAG], "
                             f"e.g. 127.0.0.1:5000/{ref.repository}")
        self.ref, self.what, self._environ = ref, what, environ
        hub = ref.registry == "docker.io"
        self.host = "registry-1.docker.io" if hub else ref.registry
        self.repo = f"library/{ref.repository}" if hub and "/" not in ref.repository else (
            ref.repository)
        self.base = f"{'http' if insecure else 'https'}://{self.host}"
        # resource ("repository:<name>") → actions; grows with what 401 challenges ask for
        self._scopes = {f"repository:{self.repo}": {"pull", "push"} if push else {"pull"}}
        self._creds, self._creds_loaded = credentials, credentials is not None
        self._auth: str | None = None  # the Authorization header value in use
        self._tokens: dict[str, str] = {}
        self.client = httpx.Client(timeout=_TIMEOUT, follow_redirects=True,
                                   verify=ssl.create_default_context())

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repo}/{path}"

    def send(self, method: str, url: str | httpx.URL, *, ok: tuple[int, ...] = (200,),
             headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
             body: Callable[[], Any] | None = None, stream: bool = False,
             missing: str = "") -> httpx.Response:
        """One request, retried once after a 401 that yields new auth. ``body`` is a factory so
        the retry can send it again. A status outside ``ok`` raises; ``missing`` is the 404 hint."""
        for attempt in (0, 1):
            hdrs = dict(headers or {})
            if self._auth:
                hdrs["Authorization"] = self._auth
            req = self.client.build_request(method, url, headers=hdrs, params=params,
                                            content=body() if body else None)
            with self.errors():
                resp = self.client.send(req, stream=stream)
                if resp.status_code in ok:
                    return resp
                resp.read()  # an error body is small; _status_error quotes it
            resp.close()
            if resp.status_code == 401 and attempt == 0 and self._authenticate(resp):
                continue
            raise self._status_error(resp, missing)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Translate transport failures into RegistryErrors that say what to do."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise RegistryError(f"registry {self.host} timed out during the {self.what}: "
                                "check the network and try again") from exc
        except httpx.HTTPError as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, ssl.SSLError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None or "SSL" in str(exc):
                raise RegistryError(
                    f"TLS with {self.host} failed during the {self.what} ({exc}): add --insecure "
                    "for a plain-HTTP registry on localhost, or add its CA certificate to the "
                    "system trust store") from exc
            if isinstance(exc, httpx.ConnectError):
                raise RegistryError(f"cannot connect to {self.host} for the {self.what} ({exc}): "
                                    f"is the registry running at {self.base}?") from exc
            raise RegistryError(f"the connection to {self.host} failed during the {self.what} "
                                f"({exc.__class__.__name__}): is the registry running at "
                                f"{self.base}? then try again") from exc

    def _credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self._creds, self._creds_loaded = find_credentials(self.host, self._environ), True
        return self._creds

    def _authenticate(self, resp: httpx.Response) -> bool:
        """Set new auth from a 401's challenge; False when there is nothing new to try."""
        challenge = resp.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        creds = self._credentials()
        if scheme == "basic":
            if creds is None:
                return False
            value = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            new = f"Basic {value}"
        elif scheme == "bearer":
            for scope in params.get("scope", "").split():
                resource, _, actions = scope.rpartition(":")
                self._scopes.setdefault(resource, set()).update(actions.split(","))
            key = " ".join(f"{r}:{','.join(sorted(a))}" for r, a in sorted(self._scopes.items()))
            token = self._tokens.get(key)
            if token is None or self._auth == f"Bearer {token}":  # none yet, or it expired
                token = self._tokens[key] = self._token(params, key.split(), creds)
            new = f"Bearer {token}"
        else:
            return False
        changed, self._auth = new != self._auth, new
        return changed

    def _token(self, params: dict[str, str], scopes: list[str],
               creds: Credentials | None) -> str:
        realm = params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(f"registry {self.host} sent no usable token realm ({realm!r}): "
                                "check its auth configuration")
        query: dict[str, str | list[str]] = {"scope": scopes}
        if params.get("service"):
            query["service"] = params["service"]
        with self.errors():
            resp = self.client.get(realm, params=query, auth=creds)
        who = f"user {creds[0]!r}" if creds else "anonymous access"
        if resp.status_code in (401, 403):
            raise RegistryError(
                f"the token service of {self.host} refused {who} ({resp.status_code}) during the "
                f"{self.what}: log in with `noops login {self.host}` {_LOGIN_HINT}")
        if resp.status_code != 200:
            raise RegistryError(f"the token service of {self.host} failed ({resp.status_code}) "
                                f"during the {self.what}: try again later")
        try:
            data = resp.json()
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service of {self.host} sent no token: check its "
                                "configuration")
        return token

    def _status_error(self, resp: httpx.Response, missing: str) -> RegistryError:
        code = resp.status_code
        detail = _error_detail(resp)
        head = f"registry {self.host} refused the {self.what} ({code} {resp.reason_phrase}"
        head += f": {detail})" if detail else ")"
        if code == 401:
            login = f"log in with `noops login {self.host}`"
            hint = (f"check the password of user {self._creds[0]!r}, or {login} again"
                    if self._creds else f"{login} {_LOGIN_HINT}")
        elif code == 403:
            hint = f"the account may not use {self.repo}; ask the registry's administrator"
        elif code == 404 and missing:
            hint = missing
        elif code >= 500:
            hint = "the registry failed; try again later, and see the registry's log"
        else:
            hint = "see the registry's message above; the registry may not support this request"
        return RegistryError(f"{head}: {hint}")


def _error_detail(resp: httpx.Response) -> str:
    try:
        errors = resp.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors)
    except (ValueError, AttributeError):
        return ""
    return text[:300]


def _auth_key(key: str) -> str:
    host = re.sub(r"^https?://", "", key).split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


# -- push ---------------------------------------------------------------------------------------
def _push_blob(s: _Session, store: ImageStore, desc: Descriptor, source: str | None,
               result: PushResult, progress: Progress | None) -> None:
    """Make ``desc`` exist in ``s.repo``: skip, mount from ``source`` (a repo of the same
    registry said to hold it), or upload it from the store."""
    digest, report = desc.digest, progress or _quiet
    if s.send("HEAD", s.url(f"blobs/{digest}"), ok=(200, 404)).status_code == 200:
        result.skipped.append(digest)
        report(digest, "skipped", desc.size, desc.size)
        return
    location = None
    if source and source != s.repo:
        # A mount the registry refuses is only a missed shortcut: upload instead.
        with contextlib.suppress(RegistryError):
            resp = s.send("POST", s.url("blobs/uploads/"), ok=(201, 202),
                          params={"mount": digest, "from": source})
            if resp.status_code == 201:
                result.mounted.append(digest)
                report(digest, "mounted", desc.size, desc.size)
                return
            location = resp.headers.get("Location")
    if not store.has_blob(digest):
        raise RegistryError(f"blob {digest} is neither in {s.host}/{s.repo} nor in the local "
                            "store: pull the image's base again, then retry the push")
    if location is None:
        location = s.send("POST", s.url("blobs/uploads/"), ok=(202,)).headers.get("Location")
    if not location:
        raise RegistryError(f"registry {s.host} started an upload without a Location header: "
                            "it does not speak the Distribution API; check the address")
    path = store.blob_path(digest)
    size = path.stat().st_size
    url = httpx.URL(s.base).join(location).copy_merge_params({"digest": digest})

    def chunks() -> Iterator[bytes]:
        done = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk
                done += len(chunk)
                report(digest, "uploading", done, size)

    s.send("PUT", url, ok=(201, 204), body=chunks,
           headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
    result.uploaded.append(digest)
    report(digest, "uploaded", size, size)


def _known_path(store: ImageStore, host: str) -> Path:
    return store.root / "noops" / "remote-blobs" / f"{host.replace(':', '_')}.json"


def _known_blobs(store: ImageStore, host: str) -> dict[str, str]:
    """Which repository of ``host`` holds each blob (digest → repo), as far as this store knows.

    Only a hint for cross-repository mounts: the registry decides, and a stale entry costs one
    refused mount. Concurrent pushes may lose each other's entries; that costs an upload.
    """
    try:
        data = json.loads(_known_path(store, host).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _remember_blobs(store: ImageStore, host: str, new: dict[str, str]) -> None:
    path = _known_path(store, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        json.dump({**_known_blobs(store, host), **new}, fh, sort_keys=True, indent=1)
    Path(name).replace(path)


# -- pull ---------------------------------------------------------------------------------------
def _fetch_manifest(s: _Session, platform: str | None) -> tuple[Descriptor, bytes, dict[str, Any]]:
    desc, raw, doc = _get_manifest(s, s.ref.reference)
    if desc.media_type in _INDEXES:
        desc, raw, doc = _get_manifest(s, _choose_platform(s, doc, platform))
    if desc.media_type not in _MANIFESTS:
        raise RegistryError(f"{s.ref} is a {desc.media_type!r} manifest, which noops cannot "
                            "read: republish it as an OCI or Docker v2 image")
    return desc, raw, doc


def _get_manifest(s: _Session, reference: str) -> tuple[Descriptor, bytes, dict[str, Any]]:
    resp = s.send("GET", s.url(f"manifests/{reference}"),
                  headers={"Accept": ", ".join(_MANIFESTS + _INDEXES)},
                  missing=f"no image {s.ref} in the registry {s.host}; check the name and tag")
    raw = resp.content
    digest = sha256_digest(raw)
    expected = reference if reference.startswith("sha256:") else resp.headers.get(
        "Docker-Content-Digest", "")
    if expected.startswith("sha256:") and expected != digest:
        raise RegistryError(f"registry {s.host} sent a manifest for {s.ref} whose digest is "
                            f"{digest}, not {expected}: the registry or a proxy altered it; "
                            "do not use it, and try again")
    doc = _json_object(raw, s)
    media_type = str(doc.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0])
    if "manifests" in doc and media_type not in _INDEXES:
        media_type = INDEX
    return Descriptor(media_type, digest, len(raw)), raw, doc


def _choose_platform(s: _Session, index: dict[str, Any], platform: str | None) -> str:
    machine = _platform.machine().lower()
    want = (platform or f"linux/{_ARCH.get(machine, machine)}").split("/")
    offered = []
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        offered.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if [plat.get("os"), plat.get("architecture")] == want[:2]:
            return Descriptor.from_json(entry).digest
    raise RegistryError(f"{s.ref} has no image for {'/'.join(want[:2])} (it offers "
                        f"{', '.join(offered) or 'none'}): choose one of those platforms")


def _fetch_small_blob(s: _Session, desc: Descriptor) -> bytes:
    resp = s.send("GET", s.url(f"blobs/{desc.digest}"),
                  missing=f"the registry lost blob {desc.digest} of {s.ref}; push the image again")
    data = resp.content
    if sha256_digest(data) != desc.digest:
        raise _mismatch(s, desc)
    return data


def _download(s: _Session, store: ImageStore, desc: Descriptor) -> None:
    """Stream one blob into the store, verifying digest and size before it gets its name."""
    missing = f"the registry lost blob {desc.digest} of {s.ref}; push the image again"
    with store.blob_writer() as fh:
        resp = s.send("GET", s.url(f"blobs/{desc.digest}"), stream=True, missing=missing)
        with contextlib.closing(resp):
            sha, size = hashlib.sha256(), 0
            with s.errors():
                for chunk in resp.iter_bytes(_CHUNK):
                    sha.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
        if "sha256:" + sha.hexdigest() != desc.digest or size != desc.size:
            raise _mismatch(s, desc)
    store.commit_blob(fh, desc.digest)


def _mismatch(s: _Session, desc: Descriptor) -> RegistryError:
    return RegistryError(f"blob {desc.digest} of {s.ref} from {s.host} does not match its digest "
                         "or size: the registry or a proxy corrupted it; nothing was stored, "
                         "try again")


def _json_object(raw: bytes, s: _Session) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"registry {s.host} sent invalid JSON for {s.ref}: check that "
                            f"{s.base} is an OCI registry") from exc
    if not isinstance(value, dict):
        raise RegistryError(f"registry {s.host} sent a non-object for {s.ref}: check that "
                            f"{s.base} is an OCI registry")
    return value


def login(registry: str, user: str, password: str, *, insecure: bool = False,
          environ: Mapping[str, str] = os.environ) -> Path:
    """Check ``user``/``password`` against ``registry`` (``GET /v2/``), then save them.

    They go where :func:`find_credentials` looks first and other tools look too:
    ``$REGISTRY_AUTH_FILE`` if set, else ``$DOCKER_CONFIG/config.json`` or
    ``~/.docker/config.json``, written atomically with mode 0600. A refused login saves nothing.
    """
    ref = parse_reference(f"{registry}/noops-login")
    with _Session(ref, insecure, (user, password), environ, "login", push=False) as s:
        s.send("GET", f"{s.base}/v2/")
    if environ.get("REGISTRY_AUTH_FILE"):
        path = Path(environ["REGISTRY_AUTH_FILE"])
    else:
        home = environ.get("DOCKER_CONFIG") or str(Path(environ.get("HOME", "~")).expanduser()
                                                   / ".docker")
        path = Path(home) / "config.json"
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as exc:
        raise RegistryError(f"{path} is not valid JSON; fix or remove it, then log in again") from exc
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    data.setdefault("auths", {})[registry] = {"auth": token}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
    return path
