"""Routes to requirements: the policy the gateway enforces on every request.

**Path normalisation** (:func:`normalize_path`). The proxy normalises the request path once,
decides on the result and forwards *the same string* upstream, so the path that was authorised
is the path the app serves. The input is the path of the request target (everything before the
first ``?``; the query never takes part in matching). In order:

1. It must start with ``/``, be at most :data:`MAX_PATH_LEN` characters and hold only RFC 3986
   path characters (unreserved, sub-delims, ``:``, ``@``, ``/``, ``%``): spaces, ``\\``, ``#``,
   controls and non-ASCII characters give None (answer 400).
2. Percent-encoding: every ``%`` must start a valid ``%XX`` triplet. Encoded unreserved
   characters (``A-Z a-z 0-9 - . _ ~``) are decoded (so ``%2e%2e`` is ``..``); encoded ``/``,
   ``\\`` and control characters (``%00``-``%1F``, ``%7F``) give None, because upstreams disagree
   on what they mean; every other triplet stays encoded with upper-case hex (``%252f`` stays
   ``%252F``, it is never decoded twice).
3. Runs of ``/`` collapse to one.
4. Dot segments are removed as in RFC 3986 §5.2.4 (``..`` above the root stays at the root);
   a path ending in ``.`` / ``..`` / ``/`` keeps its trailing slash.

The result is idempotent and never holds ``//``, ``.`` or ``..`` segments (property-tested).

**Policy file** (TOML)::

    mode = "enforce"                  # or "shadow": allow everything, record what would happen
    [[route]]
    id = "admin"                      # optional; default "#<index>"
    host = "app.example.com"          # exact, or "*.example.com" (exactly one more label)
    path = "/admin"                   # normalised prefix, matched on segment boundaries
    methods = ["GET", "POST"]         # default: any; other methods are denied, not passed on
    authenticated = true              # default true
    groups = ["ops"]                  # any one of them; needs authenticated = true
    device_cert = "required"          # or "optional" (default)
    min_score = 60                    # 0..100, default 0; score == min_score passes
    below = "step_up"                 # "deny" (default) | "step_up" | "read_only"
    allow_spiffe = ["spiffe://noops.local/app/a/web"]   # workloads allowed here
    shadow = false                    # this route only records what it would do
    deny = false                      # an explicit deny rule: it wins over every other route

**Matching.** A route matches when its host matches and its path is a prefix of the request
path that ends at a segment boundary (``/admin`` matches ``/admin``, ``/admin/x`` and
``/admin;x``, not ``/administrator``). Path matching ignores ASCII case: some upstreams fold
case, so ``/ADMIN`` must meet ``/admin``'s requirements. Order, most specific first:

1. exact host before ``*.suffix`` host;
2. then the longer path prefix;
3. routes equal on both count together and the most restrictive outcome wins
   (deny > step_up > read_only > allow).

The most specific routes decide, except that **deny wins**: any matching ``deny = true`` route
denies, a hard deny from the trust score denies, and **no matching route denies**.

**Requirements** of the deciding route, checked together (every unmet one is reported):
method, then for a workload (``identity.spiffe_id`` set) only ``allow_spiffe`` (default deny);
for a user ``authenticated``, ``groups``, ``device_cert`` and ``min_score``. Below the minimum
score ``below`` picks the outcome; ``read_only`` allows only GET, HEAD and OPTIONS and denies
writes. **Shadow**: with ``mode = "shadow"`` (or ``shadow = true`` on the deciding route) the
outcome is ``allow`` and ``shadow_outcome`` says what enforcement would have done; hard denies
from the threat list are enforced even then.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import threading
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from noops.gate._errors import GateError
from noops.gate.endpoints import normalize_host
from noops.gate.trust import TrustResult

__all__ = [
    "MAX_PATH_LEN",
    "Decision",
    "Identity",
    "Outcome",
    "Policy",
    "PolicyChange",
    "PolicyError",
    "PolicyStore",
    "RequestFacts",
    "Route",
    "normalize_path",
]

Outcome = Literal["allow", "deny", "step_up", "read_only"]
MAX_PATH_LEN: Final = 8192

_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_PATH_CHARS_RE: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# Already normal: no percent sign, no empty segment (dot segments are checked apart). Written so
# that no character can be matched two ways: a nested "(x+/?)*" backtracks exponentially (ReDoS).
_FAST_RE: Final = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]+/)*[A-Za-z0-9\-._~!$&'()*+,;=:@]*")
_DOT_SEGMENT_RE: Final = re.compile(r"/\.\.?(?:/|$)")
_SEVERITY: Final[Mapping[str, int]] = {"allow": 0, "read_only": 1, "step_up": 2, "deny": 3}
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_METHOD_RE: Final = re.compile(r"[A-Z][A-Z-]{0,31}")
_SPIFFE_RE: Final = re.compile(r"spiffe://[a-z0-9.\-_]+(?:/[A-Za-z0-9.\-_]+)+")
_ROUTE_KEYS: Final = frozenset({"id", "host", "path", "methods", "authenticated", "groups", "device_cert",
                                "min_score", "below", "allow_spiffe", "shadow", "deny"})


class PolicyError(GateError):
    """The policy file is invalid or the policy store failed; the message names the fix."""

    exit_code = 2
    http_status = 400


def normalize_path(raw: str) -> str | None:
    """The normal form of a request path, or None when it must be refused (400).

    See the module docstring for the rules; the proxy must forward exactly the returned string.
    """
    if not raw or raw[0] != "/" or len(raw) > MAX_PATH_LEN:
        return None
    if _FAST_RE.fullmatch(raw) and not _DOT_SEGMENT_RE.search(raw):
        return raw   # the common case: nothing to decode, collapse or remove
    if not _PATH_CHARS_RE.fullmatch(raw):
        return None
    path = raw
    if "%" in raw:
        pieces = raw.split("%")
        out = [pieces[0]]
        for piece in pieces[1:]:
            if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
                return None
            code = int(piece[:2], 16)
            char = chr(code)
            if char in _UNRESERVED:
                out.append(char)
            elif code < 0x20 or code == 0x7F or char in "/\\":
                return None
            else:
                out.append("%" + piece[:2].upper())
            out.append(piece[2:])
        path = "".join(out)
    stack: list[str] = []
    trailing = False
    for segment in path.split("/")[1:]:
        if segment in ("", "."):
            trailing = True
        elif segment == "..":
            if stack:
                stack.pop()
            trailing = True
        else:
            stack.append(segment)
            trailing = False
    if not stack:
        return "/"
    return "/" + "/".join(stack) + ("/" if trailing else "")


# -- data --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the proxy knows about the request. ``host`` comes from
    :func:`noops.gate.endpoints.normalize_host`, ``path`` from :func:`normalize_path`."""

    host: str
    path: str
    method: str
    client_ip: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as verified by the gateway (never from request headers).

    ``user`` is None for anonymous requests; ``device_cert`` is True when a valid device
    certificate was presented; ``spiffe_id`` is set for a workload that authenticated with its
    X.509-SVID, and makes the request a service-to-service call.
    """

    user: str | None = None
    groups: frozenset[str] = frozenset()
    device_cert: bool = False
    spiffe_id: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome, the route that decided (None when none matched), machine reason codes, a
    message for the user that says what is missing (no policy internals), what enforcement
    would have done in shadow mode (None otherwise), the policy version and the path decided on.
    """

    outcome: Outcome
    route_id: str | None
    reasons: list[str]
    user_message: str
    shadow_outcome: Outcome | None = None
    policy_version: str = ""
    path: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """One validated ``[[route]]`` entry; see the module docstring for each field."""

    id: str
    host: str
    path: str = "/"
    methods: frozenset[str] = frozenset()
    authenticated: bool = True
    groups: frozenset[str] = frozenset()
    device_cert: Literal["required", "optional"] = "optional"
    min_score: int = 0
    below: Literal["deny", "step_up", "read_only"] = "deny"
    allow_spiffe: frozenset[str] = frozenset()
    shadow: bool = False
    deny: bool = False
    _path_lc: str = field(default="", repr=False, compare=False)

    def path_matches(self, path_lc: str) -> bool:
        prefix = self._path_lc
        if prefix == "/":
            return True
        return path_lc.startswith(prefix) and (len(path_lc) == len(prefix) or path_lc[len(prefix)] in "/;")


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One entry of :meth:`PolicyStore.history`."""

    time: float
    actor: str
    version: str
    previous: str | None


# -- loading -------------------------------------------------------------------------------------


def _fail(where: str, message: str) -> PolicyError:
    return PolicyError(f"policy: {where} {message}")


def _str_list(raw: object, where: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise _fail(where, "must be a list of non-empty strings")
    return raw


def _route(index: int, raw: object) -> Route:
    where = f"route[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be a table ([[route]])")
    for key in raw:
        if key not in _ROUTE_KEYS:
            raise _fail(f"{where}.{key}", f"is not a known field; known: {', '.join(sorted(_ROUTE_KEYS))}")
    route_id = raw.get("id", f"#{index}")
    if not isinstance(route_id, str) or not route_id:
        raise _fail(f"{where}.id", "must be a non-empty string")
    host = raw.get("host")
    if not isinstance(host, str):
        raise _fail(f"{where}.host", "is required: an exact host or '*.suffix'")
    bare = host[2:] if host.startswith("*.") else host
    if not bare or normalize_host(bare) != bare or "*" in bare:
        raise _fail(f"{where}.host", f"{host!r} must be a lower-case host without port, or '*.suffix'")
    path = raw.get("path", "/")
    if not isinstance(path, str) or normalize_path(path) != path:
        raise _fail(f"{where}.path", f"{path!r} must be a normalised path such as '/admin' "
                                     "(no '//', '.', '..', encoded '/' or query)")
    if len(path) > 1:
        path = path.rstrip("/")
    methods = _str_list(raw.get("methods", []), f"{where}.methods")
    for method in methods:
        if not _METHOD_RE.fullmatch(method):
            raise _fail(f"{where}.methods", f"{method!r} must be an upper-case HTTP method such as 'GET'")
    bools = {}
    for key, default in (("authenticated", True), ("shadow", False), ("deny", False)):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise _fail(f"{where}.{key}", "must be true or false")
        bools[key] = value
    groups = _str_list(raw.get("groups", []), f"{where}.groups")
    if groups and not bools["authenticated"]:
        raise _fail(f"{where}.groups", "needs authenticated = true (groups belong to signed-in users)")
    device = raw.get("device_cert", "optional")
    if device not in ("required", "optional"):
        raise _fail(f"{where}.device_cert", "must be 'required' or 'optional'")
    min_score = raw.get("min_score", 0)
    if isinstance(min_score, bool) or not isinstance(min_score, int) or not 0 <= min_score <= 100:
        raise _fail(f"{where}.min_score", "must be an integer 0..100")
    below = raw.get("below", "deny")
    if below not in ("deny", "step_up", "read_only"):
        raise _fail(f"{where}.below", "must be 'deny', 'step_up' or 'read_only'")
    spiffe = _str_list(raw.get("allow_spiffe", []), f"{where}.allow_spiffe")
    for sid in spiffe:
        if len(sid) > 2048 or not _SPIFFE_RE.fullmatch(sid):
            raise _fail(f"{where}.allow_spiffe", f"{sid!r} must be a SPIFFE ID such as "
                                                 "'spiffe://noops.local/app/a/web' (no port, query or '..')")
    return Route(id=route_id, host=host, path=path, methods=frozenset(methods),
                 authenticated=bools["authenticated"], groups=frozenset(groups), device_cert=device,
                 min_score=min_score, below=below, allow_spiffe=frozenset(spiffe), shadow=bools["shadow"],
                 deny=bools["deny"], _path_lc=path.lower())


# -- deciding --------------------------------------------------------------------------------------


def _evaluate(route: Route, request: RequestFacts, trust: TrustResult, identity: Identity,
              reasons: list[str], messages: list[str]) -> str:
    """The outcome ``route`` gives; appends reason codes and user messages."""
    outcome = "allow"
    if route.deny:
        reasons.append("route_denied")
        messages.append("this route is closed")
        return "deny"
    if route.methods and request.method not in route.methods:
        reasons.append("method_not_allowed")
        messages.append(f"this route does not accept {request.method}")
        outcome = "deny"
    if identity.spiffe_id is not None:
        if identity.spiffe_id not in route.allow_spiffe:
            reasons.append("spiffe_not_allowed")
            messages.append("this service is not allowed to call this route")
            outcome = "deny"
        return outcome
    if route.authenticated and identity.user is None:
        reasons.append("unauthenticated")
        messages.append("sign in to use this route")
        return "deny"
    if route.groups and route.groups.isdisjoint(identity.groups):
        reasons.append("group_missing")
        messages.append("your account is not in a group allowed on this route")
        outcome = "deny"
    if route.device_cert == "required" and not identity.device_cert:
        reasons.append("device_cert_missing")
        messages.append("this route needs a device certificate")
        outcome = "deny"
    if trust.score < route.min_score:
        reasons.append("score_below_min")
        gap = f"score {trust.score} < {route.min_score}"
        if route.below == "step_up":
            messages.append(f"{gap}: verify with your authenticator")
            below = "step_up"
        elif route.below == "read_only" and request.method in _READ_METHODS:
            messages.append(f"{gap}: read-only access; verify with your authenticator to make changes")
            below = "read_only"
        elif route.below == "read_only":
            reasons.append("read_only_write")
            messages.append(f"{gap}: read-only access, changes are refused; verify with your authenticator")
            below = "deny"
        else:
            messages.append(f"{gap}: sign in with a stronger method or from a trusted device")
            below = "deny"
        if _SEVERITY[below] > _SEVERITY[outcome]:
            outcome = below
    return outcome


class Policy:
    """A validated, immutable policy. Build it with :meth:`load`; ``version`` is
    ``sha256:<hex>`` of the canonical JSON of the parsed file (comments and layout do not count)."""

    __slots__ = ("_exact", "_wild", "mode", "routes", "version")

    def __init__(self, routes: Sequence[Route], mode: Literal["enforce", "shadow"], version: str) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self.mode = mode
        self.version = version
        self._exact: dict[str, list[Route]] = {}
        self._wild: dict[str, list[Route]] = {}
        for route in self.routes:
            if route.host.startswith("*."):
                self._wild.setdefault(route.host[2:], []).append(route)
            else:
                self._exact.setdefault(route.host, []).append(route)
        for table in (self._exact, self._wild):
            for routes_of_host in table.values():
                routes_of_host.sort(key=lambda r: -len(r.path))   # stable: file order breaks ties

    @classmethod
    def load(cls, text: str) -> Policy:
        """Parse and validate a policy file; a :class:`PolicyError` names the route and field."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy: not valid TOML ({exc}); fix the syntax") from exc
        for key in data:
            if key not in ("mode", "route"):
                raise _fail(key, "is not a known top-level field (use mode and [[route]])")
        mode = data.get("mode", "enforce")
        if mode not in ("enforce", "shadow"):
            raise _fail("mode", "must be 'enforce' or 'shadow'")
        raw_routes = data.get("route", [])
        if not isinstance(raw_routes, list):
            raise _fail("route", "must be an array of tables ([[route]])")
        routes = [_route(i, r) for i, r in enumerate(raw_routes)]
        ids = [r.id for r in routes]
        for i, rid in enumerate(ids):
            if rid in ids[:i]:
                raise _fail(f"route[{i}].id", f"{rid!r} is used twice; route ids must be unique")
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        version = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
        return cls(routes, mode, version)

    def decide(self, request: RequestFacts, trust: TrustResult, identity: Identity) -> Decision:
        """Decide one request; pure and I/O-free (see the module docstring for the rules)."""
        path = request.path
        if normalize_path(path) != path:
            # The proxy must decide on what it forwards; anything else is a bug or an attack.
            return self._finish("deny", None, ["path_not_normalized"], ["the request path is ambiguous"],
                                "deny", path, hard=True)
        path_lc = path.lower()
        matches: list[Route] = []
        exact = self._exact.get(request.host)
        if exact:
            matches.extend(r for r in exact if r.path_matches(path_lc))
        dot = request.host.find(".")
        if dot > 0:
            wild = self._wild.get(request.host[dot + 1:])
            if wild:
                matches.extend(r for r in wild if r.path_matches(path_lc))
        reasons: list[str] = []
        messages: list[str] = []
        if trust.hard_denies:
            reasons.extend(trust.hard_denies)
            messages.append("access from this network or device is blocked")
        if not matches:
            reasons.append("no_route")
            messages.append("no route allows this request")
            return self._finish("deny", None, reasons, messages, "deny", path, hard=bool(trust.hard_denies))
        first = matches[0]
        top = [r for r in matches if r.host == first.host and len(r.path) == len(first.path)]
        top.extend(r for r in matches if r.deny and r not in top)   # deny wins across all matches
        enforced: str = "allow"
        would: str = "allow"
        route_id = first.id
        worst = -1
        for route in top:
            outcome = _evaluate(route, request, trust, identity, reasons, messages)
            severity = _SEVERITY[outcome]
            if severity > worst:
                worst, route_id = severity, route.id
            if severity > _SEVERITY[would]:
                would = outcome
            if not route.shadow and severity > _SEVERITY[enforced]:
                enforced = outcome
        if trust.hard_denies:
            return self._finish("deny", route_id, reasons, messages, "deny", path, hard=True)
        return self._finish(enforced, route_id, reasons, messages, would, path, hard=False)

    def _finish(self, enforced: str, route_id: str | None, reasons: list[str], messages: list[str],
                would: str, path: str, *, hard: bool) -> Decision:
        shadowed = self.mode == "shadow" and not hard
        outcome = "allow" if shadowed else enforced
        shadow_outcome: Any = None
        if shadowed or would != enforced:
            shadow_outcome = would
            reasons.append("shadow")
        message = "; ".join(messages) if outcome != "allow" else ""
        return Decision(outcome, route_id, reasons, message, shadow_outcome,  # type: ignore[arg-type]
                        self.version, path)


# -- the store -------------------------------------------------------------------------------------


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PolicyStore:
    """Every applied policy version on disk, and an atomic pointer to the current one.

    Layout under ``directory``: ``versions/<hex>.toml`` (the text as applied, never deleted),
    ``current`` (the current version, replaced atomically with rename) and ``history.jsonl``
    (one line per apply: time, actor, version, previous). The history line is written and
    fsync'd *before* the switch, so no change takes effect unrecorded (NIST 800-207 §5.1).
    Safe for threads of one process; use one writer process per directory.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._versions = self.directory / "versions"
        self._lock = threading.Lock()
        self._current: Policy | None = None
        try:
            self._versions.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PolicyError(f"cannot create the policy store {self.directory} ({exc}); "
                              "check the path and its permissions") from exc

    def apply(self, text: str, actor: str) -> str:
        """Validate ``text``, keep it, make it current and return its version."""
        if not actor or any(ord(c) < 0x20 for c in actor):
            raise PolicyError("policy: apply needs the actor (who made the change), "
                              "without control characters")
        policy = Policy.load(text)
        digest = policy.version.removeprefix("sha256:")
        with self._lock:
            previous = self._read_pointer()
            try:
                target = self._versions / f"{digest}.toml"
                if not target.exists():
                    _write_atomic(target, text.encode())
                line = json.dumps({"time": time.time(), "actor": actor, "version": policy.version,
                                   "previous": previous}, sort_keys=True) + "\n"
                fd = os.open(self.directory / "history.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _write_atomic(self.directory / "current", policy.version.encode())
            except OSError as exc:
                raise PolicyError(f"cannot write the policy store {self.directory} ({exc}); "
                                  "check free space and permissions") from exc
            self._current = policy
        return policy.version

    def current(self) -> Policy:
        """The current policy (cached in memory; :meth:`refresh` rereads the disk)."""
        policy = self._current
        if policy is None:
            policy = self.refresh()
        return policy

    def refresh(self) -> Policy:
        """Reread the current version from disk, checking its content hash."""
        with self._lock:
            version = self._read_pointer()
            if version is None:
                raise PolicyError(f"no policy has been applied in {self.directory}; apply one first")
            self._current = self.load_version(version)
            return self._current

    def load_version(self, version: str) -> Policy:
        """A stored version, checked against its hash (a tampered file raises)."""
        path = self._versions / f"{version.removeprefix('sha256:')}.toml"
        try:
            text = path.read_text()
        except OSError as exc:
            raise PolicyError(f"policy version {version} is not in {self._versions} ({exc}); "
                              "apply the policy again") from exc
        policy = Policy.load(text)
        if policy.version != version:
            raise PolicyError(f"policy file {path} does not match its version {version}; it was changed "
                              "on disk: apply the intended policy again")
        return policy

    def source(self, version: str) -> str:
        """The text of a stored version as it was applied (checked against its hash)."""
        policy = self.load_version(version)
        return (self._versions / f"{policy.version.removeprefix('sha256:')}.toml").read_text()

    def history(self) -> list[PolicyChange]:
        """Every apply, oldest first."""
        try:
            lines = (self.directory / "history.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            entry = json.loads(line)
            out.append(PolicyChange(entry["time"], entry["actor"], entry["version"], entry["previous"]))
        return out

    def _read_pointer(self) -> str | None:
        try:
            return (self.directory / "current").read_text().strip() or None
        except FileNotFoundError:
            return None
