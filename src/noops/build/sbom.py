"""CycloneDX 1.5 SBOMs for the images noops builds.

Pure functions: each parser takes the text a package manager left in the image (dpkg's status
database, ``pip list --format=json``, ``package-lock.json``, ``go version -m``) and returns
:class:`Component` values; :func:`cyclonedx` turns them into a document and :func:`dumps` into
bytes. Nothing here runs a program, touches the network or reads a clock.

The same inputs always give byte-identical output, whatever their order: the document goes into
a reproducible image layer (``/layers/sbom/launch/...``, see images.md §1.6). So there is no
wall-clock timestamp unless the caller passes one, and the serial number is a UUIDv5 of the rest
of the document.

Package URLs follow the purl specification: every character outside ``A-Z a-z 0-9 . - _ ~`` is
percent-encoded, except ``:``, which the specification says must never be encoded. A Debian
epoch therefore stays readable: ``pkg:deb/debian/file@1:5.44-3?arch=amd64&distro=debian-12``.

Malformed input raises :class:`~noops.errors.BuildError` naming the file and what to do.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from noops.errors import BuildError

__all__ = [
    "SOURCE_PROPERTY",
    "Component",
    "ComponentType",
    "cyclonedx",
    "dumps",
    "go_mod_requires",
    "go_modules",
    "npm_packages",
    "os_packages",
    "os_packages_from_dir",
    "package_url",
    "python_packages",
    "python_packages_from_site",
    "summarize",
]

ComponentType = Literal["library", "operating-system", "application"]

#: Property naming the package manager a component was found by: dpkg, pip, npm or go.
SOURCE_PROPERTY = "noops:source"
NPM_DEV_PROPERTY = "cdx:npm:package:development"  # from the CycloneDX property taxonomy

SPEC_VERSION = "1.5"
SCHEMA_URL = "http://cyclonedx.org/schema/bom-1.5.schema.json"
# Fixed namespace for serial numbers: uuid5(namespace, document) is stable across machines.
_SERIAL_NAMESPACE = uuid.UUID("04d38b4c-ff7d-4e68-b69e-761717a030b3")


@dataclass(frozen=True)
class Component:
    """One package found in the image.

    ``licenses`` holds declared licences as found: a single SPDX expression (``"MIT"``,
    ``"Apache-2.0 OR MIT"``) is written as a CycloneDX ``expression``, anything else as licence
    names. ``hashes`` maps a CycloneDX algorithm name (``"SHA-512"``) to lowercase hex.
    """

    name: str
    version: str | None
    purl: str
    type: ComponentType = "library"
    licenses: tuple[str, ...] = ()
    supplier: str | None = None
    author: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- package URLs


def _pct(text: str) -> str:
    # quote() never encodes ALPHA DIGIT "_.-~"; the purl spec adds ":" to that set.
    return quote(text, safe=":", errors="replace")


def package_url(
    type_: str,
    name: str,
    version: str | None = None,
    *,
    namespace: str | None = None,
    qualifiers: Mapping[str, str] | None = None,
) -> str:
    """Build a canonical purl; each component is percent-encoded, qualifiers sorted by key.

    ``namespace`` may hold several ``/``-separated segments (Go module paths); each segment is
    encoded on its own. Empty qualifier values are dropped, as the specification requires.
    """
    out = f"pkg:{type_.lower()}/"
    segments = [s for s in (namespace or "").split("/") if s]
    if segments:
        out += "/".join(_pct(s) for s in segments) + "/"
    out += _pct(name)
    if version:
        out += "@" + _pct(version)
    pairs = sorted((k.lower(), v) for k, v in (qualifiers or {}).items() if v)
    if pairs:
        out += "?" + "&".join(f"{k}={_pct(v)}" for k, v in pairs)
    return out


# --------------------------------------------------------------------------- Debian (dpkg)


def _deb822(text: str, kind: str) -> Iterator[dict[str, str]]:
    """RFC-822 style stanzas separated by blank lines; continuation lines start with blanks."""
    fields: dict[str, str] = {}
    key: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t":
            if key is None:
                raise BuildError(f"{kind}: line {lineno} continues a field that never started")
            fields[key] += "\n" + line[1:]
        else:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise BuildError(
                    f"{kind}: line {lineno} is not a 'Field: value' line: {line[:60]!r}; "
                    "the dpkg database is damaged or this is not a dpkg status file"
                )
            key = name.strip()
            fields[key] = value.strip()
    if fields:
        yield fields


def _dpkg_components(
    text: str, kind: str, distro: str, distro_version: str, *, status_required: bool
) -> list[Component]:
    found: list[Component] = []
    for stanza in _deb822(text, kind):
        status = stanza.get("Status")
        if status is None and status_required:
            raise BuildError(f"{kind}: the stanza for {stanza.get('Package', '?')} has no Status")
        # "want flag status": held packages ("hold ok installed") are on disk too.
        if status is not None and status.split()[-1:] != ["installed"]:
            continue
        name, version = stanza.get("Package"), stanza.get("Version")
        if not name or not version:
            raise BuildError(f"{kind}: an installed package lacks Package or Version: {stanza}")
        source, _, source_version = stanza.get("Source", name).partition(" ")
        source_version = source_version.strip().strip("()") or version
        found.append(
            Component(
                name=name,
                version=version,
                purl=package_url(
                    "deb",
                    name.lower(),
                    version,
                    namespace=distro.lower(),
                    qualifiers={
                        "arch": stanza.get("Architecture", ""),
                        "distro": f"{distro.lower()}-{distro_version}",
                    },
                ),
                author=stanza.get("Maintainer") or None,
                properties={
                    SOURCE_PROPERTY: "dpkg",
                    "noops:dpkg:source": source,
                    "noops:dpkg:source-version": source_version,
                },
            )
        )
    return found


def os_packages(
    dpkg_status: str, distro: str = "debian", distro_version: str = "12"
) -> list[Component]:
    """Installed packages from the text of ``/var/lib/dpkg/status``.

    Only stanzas whose ``Status`` ends in ``installed`` count (``deinstall ok config-files``
    and half-installed packages are left out). ``Source: name (version)`` becomes the
    ``noops:dpkg:source`` and ``noops:dpkg:source-version`` properties, defaulting to the
    binary package's own name and version as dpkg does.
    """
    return _dpkg_components(
        dpkg_status, "dpkg status", distro, distro_version, status_required=True
    )


def os_packages_from_dir(
    path: Path, distro: str = "debian", distro_version: str = "12"
) -> list[Component]:
    """Installed packages from a distroless ``/var/lib/dpkg/status.d/`` directory.

    Each file holds one or more stanzas; ``*.md5sums`` files are skipped. A stanza without a
    ``Status`` field counts as installed: distroless images list only what they ship.
    """
    if not path.is_dir():
        raise BuildError(f"dpkg status directory {path} does not exist or is not a directory")
    found: list[Component] = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(".md5sums") or not entry.is_file():
            continue
        text = entry.read_bytes().decode("utf-8", errors="replace")
        found += _dpkg_components(
            text, f"dpkg status file {entry.name}", distro, distro_version, status_required=False
        )
    return found


# --------------------------------------------------------------------------- Python


def _load_json(text: str, kind: str, fix: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError(f"{kind} is not valid JSON: {exc}; {fix}") from exc


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pypi(name: str, version: str, **extra: Any) -> Component:
    return Component(
        name=name,
        version=version,
        purl=package_url("pypi", _pep503(name), version),
        properties={SOURCE_PROPERTY: "pip"},
        **extra,
    )


def python_packages(pip_list_json: str) -> list[Component]:
    """Python distributions from ``pip list --format=json``; purl names are PEP 503 normalised."""
    fix = "run `pip list --format=json` again"
    data = _load_json(pip_list_json, "pip list output", fix)
    if not isinstance(data, list):
        raise BuildError(f"pip list output is not a JSON list of packages; {fix}")
    found = []
    for i, entry in enumerate(data):
        name = entry.get("name") if isinstance(entry, dict) else None
        version = entry.get("version") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(version, str) or not name:
            raise BuildError(f"pip list output: entry {i} needs string 'name' and 'version'; {fix}")
        component = _pypi(name, version)
        if entry.get("editable_project_location"):
            properties = {**component.properties, "noops:pip:editable": "true"}
            component = replace(component, properties=properties)
        found.append(component)
    return found


def _python_licenses(
    license_expression: str, license_field: str, classifiers: list[str]
) -> tuple[str, ...]:
    """Declared licences, most precise first.

    ``License-Expression`` (core metadata 2.4), then a ``License`` field that is an SPDX
    expression (httpx says ``BSD-3-Clause`` there but only "BSD License" in its classifier),
    then licence classifiers, then any other one-line ``License`` as a name.
    """
    # License: is free text, sometimes the whole licence file; only one short line is a name.
    short = license_field.strip()
    if "\n" in short or len(short) > 100 or short.upper() == "UNKNOWN":
        short = ""
    for candidate in (license_expression.strip(), short):
        if candidate and _is_spdx_expression(candidate):
            return (candidate,)
    if license_expression.strip():
        return (license_expression.strip(),)  # declared, if malformed: keep it as a name
    names = set()
    for classifier in classifiers:
        parts = [p.strip() for p in classifier.split("::")]
        # "License :: OSI Approved" alone names no licence; its children do.
        if parts[0] == "License" and len(parts) > 1 and parts[1:] != ["OSI Approved"]:
            names.add(parts[-1])
    if names:
        return tuple(sorted(names))
    return (short,) if short else ()


def python_packages_from_site(site_packages: Path) -> list[Component]:
    """Python distributions from ``*.dist-info/METADATA`` files (and ``*.egg-info`` ones).

    The metadata is parsed as text; nothing is imported.
    """
    if not site_packages.is_dir():
        raise BuildError(f"site-packages directory {site_packages} does not exist")
    found = []
    files = [
        *site_packages.glob("*.dist-info/METADATA"),
        *site_packages.glob("*.egg-info/PKG-INFO"),
        *(p for p in site_packages.glob("*.egg-info") if p.is_file()),  # distutils-era files
    ]
    for path in sorted(files):
        meta = HeaderParser().parsestr(path.read_bytes().decode("utf-8", errors="replace"))
        name, version = meta.get("Name"), meta.get("Version")
        if not name or not version:
            raise BuildError(
                f"Python package metadata {path.relative_to(site_packages)} has no Name or "
                "Version; reinstall that package"
            )
        licenses = _python_licenses(
            str(meta.get("License-Expression", "")),
            str(meta.get("License", "")),
            [str(c) for c in meta.get_all("Classifier", [])],
        )
        author = meta.get("Author") or meta.get("Author-email")
        found.append(
            _pypi(
                str(name).strip(),
                str(version).strip(),
                licenses=licenses,
                author=str(author).strip() if author else None,
            )
        )
    return found


# --------------------------------------------------------------------------- npm

_SRI_ALGS = {"sha1": "SHA-1", "sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}


def _sri_hashes(integrity: object) -> dict[str, str]:
    """Subresource-integrity strings (``sha512-<base64>``) as CycloneDX algorithm → hex."""
    hashes: dict[str, str] = {}
    if not isinstance(integrity, str):
        return hashes
    for item in integrity.split():
        alg, _, b64 = item.partition("-")
        if alg in _SRI_ALGS:
            try:
                hashes[_SRI_ALGS[alg]] = base64.b64decode(b64.split("?")[0], validate=True).hex()
            except (binascii.Error, ValueError):
                continue  # an unreadable hash is left out, not invented
    return hashes


def _platform_allows(spec: object, value: str | None) -> bool:
    """npm's ``os``/``cpu`` lists: allowed names, or ``!name`` exclusions."""
    if value is None or not isinstance(spec, list) or not spec:
        return True
    if f"!{value}" in spec:
        return False
    allowed = [s for s in spec if isinstance(s, str) and not s.startswith("!")]
    return not allowed or value in allowed


def _npm_v2_entries(packages: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, entry in packages.items():
        # "" is the project itself; keys outside node_modules are workspace sources.
        if "node_modules/" not in key:
            continue
        if not isinstance(entry, dict):
            raise BuildError(f"package-lock.json: packages[{key!r}] is not an object")
        if entry.get("link"):
            continue  # a symlink to a workspace folder, listed under its own key
        yield entry.get("name") or key.rpartition("node_modules/")[2], entry


def _npm_v1_entries(deps: dict[str, Any], trail: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, entry in deps.items():
        if not isinstance(entry, dict):
            raise BuildError(f"package-lock.json: dependencies{trail}[{name!r}] is not an object")
        yield name, entry
        nested = entry.get("dependencies")
        if isinstance(nested, dict):
            yield from _npm_v1_entries(nested, f"{trail}[{name!r}]")


def npm_packages(
    package_lock_json: str,
    *,
    include_dev: bool = False,
    target_os: str | None = "linux",
    target_cpu: str | None = None,
) -> list[Component]:
    """npm packages from ``package-lock.json`` (lockfileVersion 1, 2 or 3).

    Development packages (``"dev": true``) are left out unless ``include_dev``; when kept they
    carry ``cdx:npm:package:development=true``. Packages whose ``os``/``cpu`` lists exclude
    ``target_os``/``target_cpu`` (npm's values: ``linux``, ``x64``, ``arm64``; None = any) are
    left out, since npm does not install them there. A package found at several paths is listed
    once, as development only if every copy is.
    """
    fix = "run `npm install` to regenerate it"
    data = _load_json(package_lock_json, "package-lock.json", fix)
    if not isinstance(data, dict):
        raise BuildError(f"package-lock.json is not a JSON object; {fix}")
    lock_version = data.get("lockfileVersion")
    entries: Iterator[tuple[str, dict[str, Any]]]
    if lock_version in (2, 3) and isinstance(data.get("packages"), dict):
        entries = _npm_v2_entries(data["packages"])
    elif lock_version == 1 and isinstance(data.get("dependencies", {}), dict):
        entries = _npm_v1_entries(data.get("dependencies", {}))
    else:
        raise BuildError(
            f"package-lock.json has lockfileVersion {lock_version!r} without the matching "
            f"'packages' or 'dependencies' map; {fix}"
        )
    merged: dict[str, Component] = {}
    for name, entry in entries:
        version = entry.get("version")
        if not isinstance(version, str) or not version:
            raise BuildError(f"package-lock.json: package {name!r} has no version; {fix}")
        if not (
            _platform_allows(entry.get("os"), target_os)
            and _platform_allows(entry.get("cpu"), target_cpu)
        ):
            continue
        dev = entry.get("dev") is True
        if dev and not include_dev:
            continue
        scope, _, bare = name.rpartition("/")
        properties = {SOURCE_PROPERTY: "npm"}
        if dev:
            properties[NPM_DEV_PROPERTY] = "true"
        license_ = entry.get("license")
        component = Component(
            name=name,
            version=version,
            purl=package_url("npm", bare, version, namespace=scope or None),
            licenses=(license_,) if isinstance(license_, str) and license_ else (),
            properties=properties,
            hashes=_sri_hashes(entry.get("integrity")),
        )
        seen = merged.get(component.purl)
        if seen is not None and NPM_DEV_PROPERTY not in seen.properties:
            continue  # a production copy already counts; keep its flags
        merged[component.purl] = component
    return list(merged.values())


# --------------------------------------------------------------------------- Go


def _golang(
    path: str,
    version: str | None,
    type_: ComponentType = "library",
    properties: Mapping[str, str] | None = None,
) -> Component:
    namespace, _, name = path.rpartition("/")
    return Component(
        name=path,
        version=version,
        purl=package_url("golang", name, version, namespace=namespace or None),
        type=type_,
        properties={SOURCE_PROPERTY: "go", **(properties or {})},
    )


def _is_local_path(path: str) -> bool:
    return path.startswith(("./", "../", "/")) or path in {".", ".."}


def _replaced(
    original: Component, new_path: str, new_version: str | None, new_sum: str | None = None
) -> Component:
    """The module that was really compiled in, for a ``replace`` directive."""
    props = {k: v for k, v in original.properties.items() if k != "noops:go:sum"}
    if _is_local_path(new_path):
        # A directory on the build machine: no version exists, keep the name people know.
        return replace(
            _golang(original.name, None, original.type),
            properties={**props, "noops:go:replaced-by": new_path},
        )
    old = f"{original.name}@{original.version}" if original.version else original.name
    props["noops:go:replaces"] = old
    if new_sum:
        props["noops:go:sum"] = new_sum
    return replace(_golang(new_path, new_version or None, original.type), properties=props)


_GO_HEADER = re.compile(r"^(?P<file>.+?): (?P<go>go\d\S*|devel\b.*?)(?P<rest>\s.*)?$")


def go_modules(go_version_m_output: str) -> list[Component]:
    """Go modules compiled into binaries, from ``go version -m BINARY...`` output.

    Each binary's toolchain becomes ``pkg:golang/stdlib@<version>`` ("go1.21.5" → "1.21.5"),
    the name syft, Trivy, Grype and the Go vulnerability database use for the standard library
    (cyclonedx-gomod says ``std``). The main module is listed as an ``application`` unless
    its version is ``(devel)``, which means it is the app this SBOM describes. A ``=>``
    replacement lists the module actually compiled in, with ``noops:go:replaces``.
    """
    found: list[Component] = []
    for lineno, line in enumerate(go_version_m_output.splitlines(), 1):
        if not line.strip():
            continue
        if not line.startswith("\t"):
            header = _GO_HEADER.match(line)
            if header is None:
                raise BuildError(
                    f"go version -m output: line {lineno} is neither a 'FILE: goVERSION' header "
                    f"nor a module line: {line[:80]!r}"
                )
            toolchain = header["go"] + (header["rest"] or "")
            version = header["go"][2:] if header["go"].startswith("go") else None
            found.append(
                _golang("stdlib", version, properties={"noops:go:toolchain": toolchain.strip()})
            )
            continue
        fields = line[1:].split("\t")
        kind, args = fields[0], [f for f in fields[1:] if f]
        if kind in {"path", "build"}:
            continue
        if kind not in {"mod", "dep", "=>"} or not args:
            raise BuildError(f"go version -m output: line {lineno} is not understood: {line!r}")
        version = args[1] if len(args) > 1 else None
        checksum = args[2] if len(args) > 2 else None
        extra = {"noops:go:sum": checksum} if checksum else {}
        if kind == "=>":
            if not found or found[-1].name == "stdlib":
                raise BuildError(f"go version -m output: line {lineno} replaces nothing")
            found[-1] = _replaced(found[-1], args[0], version, checksum)
        elif kind == "mod":
            found.append(_golang(args[0], version, "application", extra))
        else:
            found.append(_golang(args[0], version, properties=extra))
    return [c for c in found if not (c.type == "application" and c.version in {None, "(devel)"})]


def _go_mod_fields(line: str) -> tuple[list[str], bool]:
    """Tokens of one go.mod line without its comment, and whether it says ``// indirect``."""
    code, _, comment = line.partition("//")
    indirect = comment.strip().startswith("indirect")
    return [t.strip('"`') for t in code.split()], indirect


def go_mod_requires(go_mod_text: str) -> list[Component]:
    """Modules a ``go.mod`` requires, with its ``replace`` directives applied.

    A fallback for binaries without build information: it lists what the module graph asks
    for, not what a particular binary links. Indirect requirements carry ``noops:go:indirect``.
    """
    requires: list[Component] = []
    replaces: list[tuple[str, str | None, str, str | None]] = []
    block: str | None = None
    for lineno, line in enumerate(go_mod_text.splitlines(), 1):
        tokens, indirect = _go_mod_fields(line)
        if not tokens:
            continue
        if block is None:
            if tokens[0] in {"require", "replace"} and tokens[1:] == ["("]:
                block = tokens[0]
                continue
            if tokens[0] not in {"require", "replace"}:
                if tokens[-1] == "(":
                    block = tokens[0]  # exclude ( / retract ( / godebug ( ...: skipped
                continue
            directive, tokens = tokens[0], tokens[1:]
        elif tokens == [")"]:
            block = None
            continue
        else:
            directive = block
        if directive == "require":
            if len(tokens) != 2:
                raise BuildError(f"go.mod line {lineno}: expected 'MODULE VERSION': {line!r}")
            extra = {"noops:go:indirect": "true"} if indirect else {}
            requires.append(_golang(tokens[0], tokens[1], properties=extra))
        elif directive == "replace":
            if "=>" not in tokens:
                raise BuildError(f"go.mod line {lineno}: a replace needs '=>': {line!r}")
            i = tokens.index("=>")
            old, new = tokens[:i], tokens[i + 1 :]
            if len(old) not in (1, 2) or len(new) not in (1, 2):
                raise BuildError(f"go.mod line {lineno}: malformed replace: {line!r}")
            replaces.append(
                (old[0], old[1] if len(old) > 1 else None, new[0], new[1] if len(new) > 1 else None)
            )
    if block is not None:
        raise BuildError(f"go.mod: the {block} block is never closed with ')'")
    found = []
    for comp in requires:
        for old_path, old_version, new_path, new_version in replaces:
            if comp.name == old_path and old_version in {None, comp.version}:
                comp = _replaced(comp, new_path, new_version)
                break
        found.append(comp)
    return found


# --------------------------------------------------------------------------- the document

_SPDX_ID = re.compile(
    r"(?:DocumentRef-[A-Za-z0-9.\-]+:)?(?:LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9][A-Za-z0-9.\-]*\+?)"
)
_SPDX_OPERATORS = {"AND", "OR", "WITH", "and", "or", "with"}


def _is_spdx_expression(text: str) -> bool:
    """Whether ``text`` parses as an SPDX licence expression (syntax only, ids not checked)."""
    tokens = re.findall(r"[()]|[^\s()]+", text)
    pos = 0

    def take_id() -> bool:
        nonlocal pos
        if (
            pos < len(tokens)
            and tokens[pos] not in _SPDX_OPERATORS
            and _SPDX_ID.fullmatch(tokens[pos])
        ):
            pos += 1
            return True
        return False

    def term() -> bool:
        nonlocal pos
        if pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            if not expression() or pos >= len(tokens) or tokens[pos] != ")":
                return False
            pos += 1
            return True
        if not take_id():
            return False
        if pos < len(tokens) and tokens[pos] in {"WITH", "with"}:
            pos += 1
            return take_id()
        return True

    def expression() -> bool:
        nonlocal pos
        if not term():
            return False
        while pos < len(tokens) and tokens[pos] in {"AND", "OR", "and", "or"}:
            pos += 1
            if not term():
                return False
        return True

    return bool(tokens) and expression() and pos == len(tokens)


def _component_json(c: Component) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": c.type, "name": c.name, "purl": c.purl, "bom-ref": c.purl}
    if c.version:
        obj["version"] = c.version
    if c.author:
        obj["author"] = c.author
    if c.supplier:
        obj["supplier"] = {"name": c.supplier}
    if len(c.licenses) == 1 and _is_spdx_expression(c.licenses[0]):
        obj["licenses"] = [{"expression": c.licenses[0]}]
    elif c.licenses:
        obj["licenses"] = [{"license": {"name": name}} for name in sorted(set(c.licenses))]
    if c.hashes:
        obj["hashes"] = [{"alg": a, "content": h.lower()} for a, h in sorted(c.hashes.items())]
    if c.properties:
        obj["properties"] = [{"name": k, "value": v} for k, v in sorted(c.properties.items())]
    return obj


def cyclonedx(
    components: Iterable[Component],
    *,
    subject_name: str,
    subject_version: str | None = None,
    tool_version: str,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """A CycloneDX 1.5 document describing ``subject_name`` and what it contains.

    Components are de-duplicated by purl (of two different entries with one purl, the one whose
    JSON sorts first wins, so input order never matters) and sorted by (type, purl); each
    ``bom-ref`` is its purl. ``serialNumber`` is a UUIDv5 of the rest of the document.
    ``timestamp`` (timezone-aware; e.g. from SOURCE_DATE_EPOCH) is written only when given.
    """
    by_purl: dict[str, tuple[str, dict[str, Any]]] = {}
    for component in components:
        obj = _component_json(component)
        key = json.dumps(obj, sort_keys=True)
        if component.purl not in by_purl or key < by_purl[component.purl][0]:
            by_purl[component.purl] = (key, obj)
    subject: dict[str, Any] = {"type": "application", "name": subject_name}
    if subject_version:
        subject["version"] = subject_version
    metadata: dict[str, Any] = {
        "component": subject,
        "tools": {
            "components": [{"type": "application", "name": "noops", "version": tool_version}]
        },
    }
    if timestamp is not None:
        if timestamp.tzinfo is None:
            raise ValueError("the SBOM timestamp must be timezone-aware")
        metadata["timestamp"] = timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": metadata,
        "components": sorted(
            (obj for _, obj in by_purl.values()), key=lambda o: (o["type"], o["purl"])
        ),
    }
    doc["serialNumber"] = f"urn:uuid:{uuid.uuid5(_SERIAL_NAMESPACE, dumps(doc).decode())}"
    return doc


def dumps(doc: Mapping[str, Any]) -> bytes:
    """Canonical bytes: sorted keys, 2-space indent, ASCII only (``\\u`` escapes), final newline."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def summarize(doc: Mapping[str, Any]) -> dict[str, int]:
    """Component counts by ``noops:source`` (``other`` when absent), sorted by source."""
    counts: dict[str, int] = {}
    for component in doc.get("components", []):
        props = {p.get("name"): p.get("value") for p in component.get("properties", [])}
        source = str(props.get(SOURCE_PROPERTY) or "other")
        counts[source] = counts.get(source, 0) + 1
    return dict(sorted(counts.items()))
