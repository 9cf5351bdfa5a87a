"""CycloneDX SBOM generation: parsers on real-looking inputs, the document, its determinism."""

from __future__ import annotations

import json
import random
import re
import sysconfig
from datetime import UTC, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noops.build import sbom
from noops.build.sbom import Component
from noops.errors import BuildError

# --------------------------------------------------------------------------- fixtures

# Stanzas from a Debian 12 /var/lib/dpkg/status (long Description and Breaks lines cut),
# plus a package removed with its configuration files left behind ("deinstall ok config-files").
DPKG_STATUS = """\
Package: bash
Essential: yes
Status: install ok installed
Priority: required
Section: shells
Installed-Size: 7164
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Multi-Arch: foreign
Source: bash (5.2.15-2)
Version: 5.2.15-2+b8
Replaces: bash-completion (<< 20060301-0), bash-doc (<= 2.05-1)
Depends: base-files (>= 2.1.12), debianutils (>= 5.6-0.1)
Pre-Depends: libc6 (>= 2.36), libtinfo6 (>= 6)
Conffiles:
 /etc/bash.bashrc 89269e1298235f1b12b4c16e4065ad0d
 /etc/skel/.bash_logout 22bfb8c1dd94b5f3813a2b25da67463f
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter that executes
 commands read from the standard input or from a file.
 .
 The Programmable Completion Code, by Ian Macdonald, is now found in
 the bash-completion package.
Homepage: http://tiswww.case.edu/php/chet/bash/bashtop.html

Package: exim4-config
Status: deinstall ok config-files
Priority: standard
Section: mail
Installed-Size: 469
Maintainer: Exim4 Maintainers <pkg-exim4-maintainers@lists.alioth.debian.org>
Architecture: all
Version: 4.96-15+deb12u7
Conffiles:
 /etc/exim4/conf.d/main/01_exim4-config_listmacrosdefs 1a5c1c8a43a2f0fbb2a9d5f2d3c3b0e4
Description: configuration for the exim MTA (v4)

Package: file
Status: install ok installed
Priority: standard
Section: utils
Installed-Size: 79
Maintainer: Christoph Biedl <debian.axhn@manchmal.in-ulm.de>
Architecture: amd64
Multi-Arch: foreign
Version: 1:5.44-3
Depends: libc6 (>= 2.34), libmagic1 (= 1:5.44-3)
Breaks: debhelper (<< 12.2~)
Description: Recognize the type of data in a file using "magic" numbers
 The file command is "a file type guesser", a command-line tool that
 tells you in words what kind of data a file contains.
Homepage: https://www.darwinsys.com/file/

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 13001
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u14
Replaces: libc6-amd64
Depends: libgcc-s1
Recommends: libidn2-0 (>= 2.0.5~)
Breaks: aide (<< 0.17.3-4+b3), busybox (<< 1.30.1-6), chrony (<< 4.2-3~)
Conffiles:
 /etc/ld.so.conf.d/x86_64-linux-gnu.conf d4e7a7b88a71b5ffd9e2644e71a0cfab
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: libgcc-s1
Protected: yes
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 140
Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: gcc-12
Version: 12.2.0-14+deb12u1
Replaces: libgcc1 (<< 1:10)
Provides: libgcc1 (= 1:12.2.0-14+deb12u1)
Depends: gcc-12-base (= 12.2.0-14+deb12u1), libc6 (>= 2.35)
Description: GCC support library
Homepage: http://gcc.gnu.org/
Important: yes

Package: tzdata
Status: install ok installed
Priority: required
Section: localization
Installed-Size: 2565
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: all
Multi-Arch: foreign
Version: 2025b-0+deb12u2
Provides: tzdata-bookworm
Depends: debconf (>= 0.5) | debconf-2.0
Description: time zone and daylight-saving time data
Homepage: https://www.iana.org/time-zones
"""

# Part of the real `pip list --format=json` output of a development machine.
PIP_LIST = """[{"name": "boolean.py", "version": "5.0"}, {"name": "click", "version": "8.4.0"},
{"name": "Flask", "version": "3.1.3"}, {"name": "httpx", "version": "0.28.1"},
{"name": "Jinja2", "version": "3.1.6"}, {"name": "MarkupSafe", "version": "3.0.3"},
{"name": "mypy_extensions", "version": "1.2.0"},
{"name": "noops", "version": "0.1.0.dev0", "editable_project_location": "/work/main"},
{"name": "PyYAML", "version": "6.0.3"}, {"name": "tomli_w", "version": "1.2.0"},
{"name": "typing_extensions", "version": "4.16.0"}, {"name": "Werkzeug", "version": "3.1.8"},
{"name": "zstandard", "version": "0.25.0"}]"""

# Subresource-integrity hashes the npm registry serves for the packages below.
INTEGRITY = {
    "@sindresorhus/is": "sha512-t09vSN3MdfsyCHoFcTRCH/iUtG7OJ0CsjzB8cjAmKc/va/kIgeDI/"
    "TxsigdncE/4be734m0cvIYwNaV4i2XqAw==",
    "@types/ms": "sha512-nG96G3Wp6acyAgJqGasjODb+acrI7KltPiRxzHPXnP3NgI28bpQDRv53olbqGXbfcgF5"
    "aiiHmO3xpwEpS5Ld9g==",
    "debug": "sha512-bC7ElrdJaJnPbAP+1EotYvqZsb3ecl5wi6Bfi6BJTUcNowp6cvspg0jXznRTKDjm/"
    "E7AdgFBVeAPVMNcKGsHMA==",
    "ms@2.0.0": "sha512-Tpp60P6IUJDTuOq/5Z8cdskzJujfwqfOTkrwIwj7IRISpnkJnT6SyJ4PCPnGMoFjC9ddh"
    "al5KVIYtAt97ix05A==",
    "fsevents": "sha512-5xoDfX+fL7faATnagmWPpbFtwh/R77WmMMqqHGS65C3vvB0YHrgF+B1YmZ3441tMj5n63k0"
    "212XNoJwzlhffQw==",
    "ms@2.1.3": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xA"
    "OtHnSO/tXtF3WRTlA==",
}

# What `npm install --package-lock-only` (npm 11) wrote for dependencies debug@2.6.9 (which
# nests ms@2.0.0), ms@2.1.3 and @sindresorhus/is, devDependency @types/ms, optional fsevents.
PACKAGE_LOCK_V3 = json.dumps(
    {
        "name": "sbom-fixture",
        "version": "1.0.0",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {
                "name": "sbom-fixture",
                "version": "1.0.0",
                "dependencies": {"@sindresorhus/is": "4.6.0", "debug": "2.6.9", "ms": "2.1.3"},
                "devDependencies": {"@types/ms": "0.7.34"},
                "optionalDependencies": {"fsevents": "2.3.3"},
            },
            "node_modules/@sindresorhus/is": {
                "version": "4.6.0",
                "integrity": INTEGRITY["@sindresorhus/is"],
                "license": "MIT",
                "engines": {"node": ">=10"},
                "funding": {"url": "https://github.com/sindresorhus/is?sponsor=1"},
            },
            "node_modules/@types/ms": {
                "version": "0.7.34",
                "integrity": INTEGRITY["@types/ms"],
                "dev": True,
                "license": "MIT",
            },
            "node_modules/debug": {
                "version": "2.6.9",
                "integrity": INTEGRITY["debug"],
                "license": "MIT",
                "dependencies": {"ms": "2.0.0"},
            },
            "node_modules/debug/node_modules/ms": {
                "version": "2.0.0",
                "integrity": INTEGRITY["ms@2.0.0"],
                "license": "MIT",
            },
            "node_modules/fsevents": {
                "version": "2.3.3",
                "integrity": INTEGRITY["fsevents"],
                "license": "MIT",
                "optional": True,
                "os": ["darwin"],
                "engines": {"node": "^8.16.0 || ^10.6.0 || >=11.0.0"},
            },
            "node_modules/ms": {
                "version": "2.1.3",
                "integrity": INTEGRITY["ms@2.1.3"],
                "license": "MIT",
            },
        },
    },
    indent=2,
)

# The same project as lockfileVersion 1 (npm 6): a nested "dependencies" tree, no licences.
PACKAGE_LOCK_V1 = json.dumps(
    {
        "name": "sbom-fixture",
        "version": "1.0.0",
        "lockfileVersion": 1,
        "requires": True,
        "dependencies": {
            "@sindresorhus/is": {"version": "4.6.0", "integrity": INTEGRITY["@sindresorhus/is"]},
            "@types/ms": {"version": "0.7.34", "dev": True, "integrity": INTEGRITY["@types/ms"]},
            "debug": {
                "version": "2.6.9",
                "integrity": INTEGRITY["debug"],
                "requires": {"ms": "2.0.0"},
                "dependencies": {
                    "ms": {"version": "2.0.0", "integrity": INTEGRITY["ms@2.0.0"]},
                },
            },
            "ms": {"version": "2.1.3", "integrity": INTEGRITY["ms@2.1.3"]},
        },
    },
    indent=2,
)

# `go version -m` on two binaries: the app (main module "(devel)", one module replaced by a
# fork and one by a local directory) and a tool installed with `go install ...@v4.17.0`.
GO_VERSION_M = (
    "/workspace/bin/server: go1.21.5\n"
    "\tpath\texample.com/shop/cmd/server\n"
    "\tmod\texample.com/shop\t(devel)\t\n"
    "\tdep\tgithub.com/go-chi/chi/v5\tv5.0.11\th1:BnpYbFZ3T3S1WMpD79r7R5ThWX40TaFB7L31Y8xqSwA=\n"
    "\tdep\tgithub.com/jackc/pgx/v5\tv5.5.1\th1:5I9etrGkLrN+2XPCsi6XLlV5DITbSL/xBZdmAxFcXPI=\n"
    "\tdep\tgolang.org/x/crypto\tv0.17.0\n"
    "\t=>\tgithub.com/shop/crypto-fork\tv0.17.1-0.20240105120000-abcdef123456\t"
    "h1:Q3kU7kXwVB1iV0eG7Y3+u8nL0a7yJ4qzKZ8a1m0n2oQ=\n"
    "\tdep\texample.com/shop/legacy\tv0.0.0-00010101000000-000000000000\n"
    "\t=>\t./legacy\t\t\n"
    "\tdep\tgithub.com/BurntSushi/toml\tv1.3.2+incompatible\t"
    "h1:o7IhLm0Msx3BaB+n3Ag7L8EVlByGnpq14C4YWiu/gL8=\n"
    "\tbuild\t-buildmode=exe\n"
    "\tbuild\t-compiler=gc\n"
    "\tbuild\tCGO_ENABLED=0\n"
    "\tbuild\tGOARCH=amd64\n"
    "\tbuild\tGOOS=linux\n"
    "\tbuild\tGOAMD64=v1\n"
    "\tbuild\tvcs=git\n"
    "\tbuild\tvcs.revision=5f2a0c8e4b1d9a7c3e6f0b2d4a8c1e3f5a7b9d0c\n"
    "\tbuild\tvcs.time=2024-01-09T10:22:31Z\n"
    "\tbuild\tvcs.modified=false\n"
    "/usr/local/bin/migrate: go1.22.0 X:boringcrypto\n"
    "\tpath\tgithub.com/golang-migrate/migrate/v4/cmd/migrate\n"
    "\tmod\tgithub.com/golang-migrate/migrate/v4\tv4.17.0\t"
    "h1:rd40H3QXU0AA4IoLllFcEAEo9dYKRHYND2gB4p7xcaU=\n"
    "\tdep\tgithub.com/hashicorp/errwrap\tv1.1.0\th1:OxrOeh75EUXMY8TBjag2fzXGZ40LB6IKw45YeGUDY2I=\n"
    "\tbuild\t-compiler=gc\n"
    "\tbuild\tGOOS=linux\n"
)

GO_MOD = """\
module example.com/shop

go 1.21

toolchain go1.21.5

require (
\tgithub.com/go-chi/chi/v5 v5.0.11
\tgithub.com/jackc/pgx/v5 v5.5.1
\tgolang.org/x/crypto v0.17.0
\texample.com/shop/legacy v0.0.0-00010101000000-000000000000
)

require (
\tgithub.com/jackc/pgpassfile v1.0.0 // indirect
\tgolang.org/x/text v0.14.0 // indirect
)

require github.com/BurntSushi/toml v1.3.2+incompatible

exclude (
\tgolang.org/x/net v0.1.0
)

replace golang.org/x/crypto => github.com/shop/crypto-fork v0.17.1-0.20240105120000-abcdef123456

replace example.com/shop/legacy => ./legacy
"""


def by_name(components: list[Component]) -> dict[str, Component]:
    return {c.name: c for c in components}


def example_doc() -> dict[str, Any]:
    components = (
        sbom.os_packages(DPKG_STATUS)
        + sbom.python_packages(PIP_LIST)
        + sbom.npm_packages(PACKAGE_LOCK_V3, include_dev=True)
        + sbom.go_modules(GO_VERSION_M)
    )
    return sbom.cyclonedx(
        components, subject_name="shop", subject_version="1.4.0", tool_version="0.1.0"
    )


# --------------------------------------------------------------------------- dpkg


def test_os_packages_lists_installed_packages_with_debian_purls() -> None:
    pkgs = by_name(sbom.os_packages(DPKG_STATUS))

    assert sorted(pkgs) == ["bash", "file", "libc6", "libgcc-s1", "tzdata"]  # no exim4-config
    assert pkgs["file"].purl == "pkg:deb/debian/file@1:5.44-3?arch=amd64&distro=debian-12"
    assert pkgs["libc6"].purl == (
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&distro=debian-12"
    )
    assert pkgs["tzdata"].purl.endswith("?arch=all&distro=debian-12")
    assert pkgs["libc6"].author == "GNU Libc Maintainers <debian-glibc@lists.debian.org>"


def test_os_packages_record_the_source_package() -> None:
    pkgs = by_name(sbom.os_packages(DPKG_STATUS))

    assert pkgs["bash"].properties == {
        "noops:source": "dpkg",
        "noops:dpkg:source": "bash",
        "noops:dpkg:source-version": "5.2.15-2",  # binNMU: differs from 5.2.15-2+b8
    }
    assert pkgs["libc6"].properties["noops:dpkg:source"] == "glibc"
    assert pkgs["libc6"].properties["noops:dpkg:source-version"] == "2.36-9+deb12u14"
    assert pkgs["file"].properties["noops:dpkg:source"] == "file"


def test_os_packages_keep_held_packages_and_skip_half_installed_ones() -> None:
    status = (
        "Package: curl\nStatus: hold ok installed\nArchitecture: arm64\nVersion: 7.88.1-10\n\n"
        "Package: vim\nStatus: install reinstreq half-installed\nArchitecture: arm64\n"
        "Version: 2:9.0.1378-2\n"
    )
    pkgs = sbom.os_packages(status, distro="Ubuntu", distro_version="24.04")

    assert [p.purl for p in pkgs] == [
        "pkg:deb/ubuntu/curl@7.88.1-10?arch=arm64&distro=ubuntu-24.04"
    ]


def test_os_packages_from_a_distroless_status_directory(tmp_path: Path) -> None:
    status_d = tmp_path / "status.d"
    status_d.mkdir()
    stanzas = DPKG_STATUS.split("\n\n")
    (status_d / "libc6").write_text(stanzas[3].replace("Status: install ok installed\n", ""))
    (status_d / "tzdata").write_text(stanzas[5])
    (status_d / "libc6.md5sums").write_text("d4e7a7b88a71b5ffd9e2644e71a0cfab  lib/x.so\n")

    pkgs = sbom.os_packages_from_dir(status_d, distro_version="12")

    assert [p.name for p in pkgs] == ["libc6", "tzdata"]
    with pytest.raises(BuildError, match="not a directory"):
        sbom.os_packages_from_dir(tmp_path / "missing")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("Package: x\nthis line has no colon\n", r"line 2 is not a 'Field: value' line"),
        (" continuation first\n", "continues a field that never started"),
        ("Package: x\nVersion: 1\n", "has no Status"),
        ("Package: x\nStatus: install ok installed\n", "lacks Package or Version"),
    ],
)
def test_os_packages_reject_damaged_status_files(status: str, message: str) -> None:
    with pytest.raises(BuildError, match=f"dpkg status: .*{message}"):
        sbom.os_packages(status)


# --------------------------------------------------------------------------- Python


def test_python_packages_normalise_names_in_purls() -> None:
    pkgs = by_name(sbom.python_packages(PIP_LIST))

    assert pkgs["typing_extensions"].purl == "pkg:pypi/typing-extensions@4.16.0"
    assert pkgs["MarkupSafe"].purl == "pkg:pypi/markupsafe@3.0.3"
    assert pkgs["boolean.py"].purl == "pkg:pypi/boolean-py@5.0"
    assert pkgs["noops"].properties == {"noops:source": "pip", "noops:pip:editable": "true"}
    assert len(pkgs) == 13


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pip: command not found", "pip list output is not valid JSON"),
        ('{"name": "x"}', "not a JSON list"),
        ('[{"name": "x"}]', "entry 0 needs string 'name' and 'version'"),
    ],
)
def test_python_packages_reject_bad_pip_output(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        sbom.python_packages(text)


def write_dist(site: Path, dirname: str, metadata_text: str, filename: str = "METADATA") -> None:
    (site / dirname).mkdir(parents=True)
    (site / dirname / filename).write_text(metadata_text)


def test_python_packages_from_site_reads_metadata_licences(tmp_path: Path) -> None:
    write_dist(
        tmp_path,
        "click-8.4.0.dist-info",
        "Metadata-Version: 2.4\nName: click\nVersion: 8.4.0\nLicense-Expression: BSD-3-Clause\n"
        "Classifier: License :: OSI Approved :: BSD License\n\nclick's README\n",
    )
    write_dist(
        tmp_path,
        "httpx-0.28.1.dist-info",
        "Metadata-Version: 2.3\nName: httpx\nVersion: 0.28.1\nLicense: BSD-3-Clause\n"
        "Author-email: Tom Christie <tom@tomchristie.com>\n"
        "Classifier: License :: OSI Approved :: BSD License\n",
    )
    write_dist(
        tmp_path,
        "typing_extensions-4.16.0.dist-info",
        "Metadata-Version: 2.1\nName: typing_extensions\nVersion: 4.16.0\n"
        "License: A. HISTORY OF THE SOFTWARE\n        |==========================\n"
        "Classifier: License :: OSI Approved\n"
        "Classifier: License :: OSI Approved :: Python Software Foundation License\n",
    )
    write_dist(
        tmp_path,
        "six-1.16.0-py3.11.egg-info",
        "Metadata-Version: 1.2\nName: six\nVersion: 1.16.0\nLicense: MIT\n"
        "Author: Benjamin Peterson\n",
        filename="PKG-INFO",
    )
    write_dist(
        tmp_path,
        "odd-1.0.dist-info",
        "Metadata-Version: 2.1\nName: odd\nVersion: 1.0\nLicense: UNKNOWN\n",
    )

    (tmp_path / "python_apt-2.6.0.egg-info").write_text(
        "Metadata-Version: 1.1\nName: python-apt\nVersion: 2.6.0\nLicense: GNU GPL\n"
    )

    pkgs = by_name(sbom.python_packages_from_site(tmp_path))

    assert pkgs["click"].licenses == ("BSD-3-Clause",)
    assert pkgs["httpx"].licenses == ("BSD-3-Clause",)  # the SPDX field beats the classifier
    assert pkgs["httpx"].author == "Tom Christie <tom@tomchristie.com>"
    assert pkgs["typing_extensions"].licenses == ("Python Software Foundation License",)
    assert pkgs["typing_extensions"].purl == "pkg:pypi/typing-extensions@4.16.0"
    assert pkgs["six"].licenses == ("MIT",)
    assert pkgs["odd"].licenses == ()
    assert pkgs["python-apt"].licenses == ("GNU GPL",)


def test_python_packages_from_site_agree_with_installed_distributions() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    found = {(c.purl.split("@")[0], c.version) for c in sbom.python_packages_from_site(site)}
    installed = {
        (sbom.package_url("pypi", re.sub(r"[-_.]+", "-", d.name).lower()), d.version)
        for d in metadata.distributions(path=[str(site)])
    }

    assert found
    assert found == installed


def test_python_packages_from_site_rejects_metadata_without_a_name(tmp_path: Path) -> None:
    write_dist(tmp_path, "broken-1.0.dist-info", "Metadata-Version: 2.1\nVersion: 1.0\n")

    with pytest.raises(BuildError, match=r"broken-1\.0\.dist-info/METADATA has no Name"):
        sbom.python_packages_from_site(tmp_path)


# --------------------------------------------------------------------------- npm


def test_npm_packages_from_lockfile_v3() -> None:
    pkgs = sbom.npm_packages(PACKAGE_LOCK_V3)

    assert [p.purl for p in pkgs] == [
        "pkg:npm/%40sindresorhus/is@4.6.0",
        "pkg:npm/debug@2.6.9",
        "pkg:npm/ms@2.0.0",  # nested under debug
        "pkg:npm/ms@2.1.3",
    ]  # no @types/ms (dev), no fsevents (darwin only)
    first = pkgs[0]
    assert first.name == "@sindresorhus/is"
    assert first.licenses == ("MIT",)
    assert first.hashes["SHA-512"].startswith("b74f6f48ddcc75fb32087a05713442")
    assert len(first.hashes["SHA-512"]) == 128


def test_npm_dev_packages_are_marked_when_included() -> None:
    pkgs = by_name(sbom.npm_packages(PACKAGE_LOCK_V3, include_dev=True, target_os=None))

    assert pkgs["@types/ms"].properties == {
        "noops:source": "npm",
        "cdx:npm:package:development": "true",
    }
    assert pkgs["@types/ms"].purl == "pkg:npm/%40types/ms@0.7.34"
    assert "fsevents" in pkgs
    assert "cdx:npm:package:development" not in pkgs["debug"].properties


def test_npm_packages_from_lockfile_v1_match_v3() -> None:
    v1 = sbom.npm_packages(PACKAGE_LOCK_V1)
    v3 = sbom.npm_packages(PACKAGE_LOCK_V3)

    assert sorted(p.purl for p in v1) == [p.purl for p in v3]
    assert by_name(v1)["debug"].hashes == by_name(v3)["debug"].hashes


def test_npm_workspaces_aliases_and_shared_dev_copies() -> None:
    lock = {
        "lockfileVersion": 2,
        "packages": {
            "": {"name": "mono", "workspaces": ["packages/*"]},
            "packages/api": {"name": "@mono/api", "version": "0.0.0"},
            "node_modules/@mono/api": {"resolved": "packages/api", "link": True},
            "node_modules/lodash-legacy": {"name": "lodash", "version": "3.10.1"},
            "node_modules/semver": {"version": "7.6.0", "dev": True, "cpu": ["!arm64"]},
            "node_modules/x/node_modules/semver": {"version": "7.6.0"},
            "node_modules/esbuild-linux-arm64": {"version": "0.15.18", "cpu": ["arm64"]},
        },
    }
    pkgs = sbom.npm_packages(json.dumps(lock), include_dev=True, target_cpu="x64")

    assert [(p.name, p.purl) for p in pkgs] == [
        ("lodash", "pkg:npm/lodash@3.10.1"),
        ("semver", "pkg:npm/semver@7.6.0"),
    ]
    assert "cdx:npm:package:development" not in pkgs[1].properties  # one copy is production


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<<<<<<< HEAD\n{}", r"package-lock.json is not valid JSON: .*; run `npm install`"),
        ("[]", "not a JSON object"),
        ('{"lockfileVersion": 4, "packages": {}}', "lockfileVersion 4"),
        ('{"lockfileVersion": 3, "packages": {"node_modules/a": {}}}', "'a' has no version"),
    ],
)
def test_npm_packages_reject_bad_lockfiles(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        sbom.npm_packages(text)


# --------------------------------------------------------------------------- Go


def test_go_modules_from_go_version_m() -> None:
    mods = by_name(sbom.go_modules(GO_VERSION_M))

    assert "example.com/shop" not in mods  # the app itself, "(devel)"
    assert mods["github.com/go-chi/chi/v5"].purl == "pkg:golang/github.com/go-chi/chi/v5@v5.0.11"
    assert mods["github.com/go-chi/chi/v5"].properties["noops:go:sum"].startswith("h1:")
    assert mods["github.com/BurntSushi/toml"].purl == (
        "pkg:golang/github.com/BurntSushi/toml@v1.3.2%2Bincompatible"
    )
    migrate = mods["github.com/golang-migrate/migrate/v4"]
    assert (migrate.type, migrate.version) == ("application", "v4.17.0")


def test_go_modules_list_the_standard_library_per_toolchain() -> None:
    stdlibs = [c for c in sbom.go_modules(GO_VERSION_M) if c.name == "stdlib"]

    assert [c.purl for c in stdlibs] == ["pkg:golang/stdlib@1.21.5", "pkg:golang/stdlib@1.22.0"]
    assert stdlibs[1].properties["noops:go:toolchain"] == "go1.22.0 X:boringcrypto"


def test_go_modules_follow_replacements() -> None:
    mods = by_name(sbom.go_modules(GO_VERSION_M))

    fork = mods["github.com/shop/crypto-fork"]
    assert fork.version == "v0.17.1-0.20240105120000-abcdef123456"
    assert fork.properties["noops:go:replaces"] == "golang.org/x/crypto@v0.17.0"
    assert fork.properties["noops:go:sum"] == "h1:Q3kU7kXwVB1iV0eG7Y3+u8nL0a7yJ4qzKZ8a1m0n2oQ="
    assert "golang.org/x/crypto" not in mods
    legacy = mods["example.com/shop/legacy"]
    assert legacy.version is None
    assert legacy.purl == "pkg:golang/example.com/shop/legacy"
    assert legacy.properties["noops:go:replaced-by"] == "./legacy"


def test_go_modules_of_a_devel_toolchain_and_of_nothing() -> None:
    out = "app: devel go1.23-4f3b7c1 Tue Jan 2 15:04:05 2024 +0000\n\tpath\tapp\n"

    assert [c.purl for c in sbom.go_modules(out)] == ["pkg:golang/stdlib"]
    assert sbom.go_modules("") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a go binary\n", "line 1 is neither a 'FILE: goVERSION' header"),
        ("x: go1.21.0\n\tweird\tfield\n", "line 2 is not understood"),
        ("x: go1.21.0\n\t=>\tgithub.com/a/b\tv1.0.0\n", "line 2 replaces nothing"),
    ],
)
def test_go_modules_reject_unknown_output(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        sbom.go_modules(text)


def test_go_mod_requires_as_a_fallback() -> None:
    mods = by_name(sbom.go_mod_requires(GO_MOD))

    assert sorted(mods) == [
        "example.com/shop/legacy",
        "github.com/BurntSushi/toml",
        "github.com/go-chi/chi/v5",
        "github.com/jackc/pgpassfile",
        "github.com/jackc/pgx/v5",
        "github.com/shop/crypto-fork",
        "golang.org/x/text",
    ]
    assert mods["golang.org/x/text"].properties["noops:go:indirect"] == "true"
    assert "noops:go:indirect" not in mods["github.com/jackc/pgx/v5"].properties
    assert mods["github.com/shop/crypto-fork"].properties["noops:go:replaces"] == (
        "golang.org/x/crypto@v0.17.0"
    )
    assert mods["example.com/shop/legacy"].properties["noops:go:replaced-by"] == "./legacy"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("require (\n\tgithub.com/a/b\n)\n", "go.mod line 2: expected 'MODULE VERSION'"),
        ("require (\n\tgithub.com/a/b v1.0.0\n", "the require block is never closed"),
        ("replace github.com/a/b ../b\n", "line 1: a replace needs '=>'"),
    ],
)
def test_go_mod_requires_rejects_malformed_files(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        sbom.go_mod_requires(text)


# --------------------------------------------------------------------------- the document


def test_document_shape() -> None:
    doc = example_doc()

    assert doc["bomFormat"] == "CycloneDX"
    assert doc["specVersion"] == "1.5"
    assert doc["version"] == 1
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", str(doc["serialNumber"]))
    meta = doc["metadata"]
    assert isinstance(meta, dict)
    assert "timestamp" not in meta
    assert meta["component"] == {"type": "application", "name": "shop", "version": "1.4.0"}
    assert meta["tools"] == {
        "components": [{"type": "application", "name": "noops", "version": "0.1.0"}]
    }
    components = doc["components"]
    assert isinstance(components, list)
    keys = [(c["type"], c["purl"]) for c in components]
    assert keys == sorted(keys)
    assert all(c["bom-ref"] == c["purl"] for c in components)
    assert len({c["purl"] for c in components}) == len(components)


def test_document_licences_are_expressions_or_names() -> None:
    components = [
        Component("a", "1", "pkg:npm/a@1", licenses=("(MIT OR Apache-2.0) AND BSD-3-Clause",)),
        Component("b", "1", "pkg:pypi/b@1", licenses=("MIT License", "BSD License")),
        Component("c", "1", "pkg:npm/c@1", licenses=("GPL-2.0-only WITH Classpath-exception-2.0",)),
        Component("d", "1", "pkg:npm/d@1", licenses=("SEE LICENSE IN LICENSE.md",)),
    ]
    doc = sbom.cyclonedx(components, subject_name="x", tool_version="0")
    licences = {c["name"]: c["licenses"] for c in doc["components"]}

    assert licences["a"] == [{"expression": "(MIT OR Apache-2.0) AND BSD-3-Clause"}]
    assert licences["b"] == [
        {"license": {"name": "BSD License"}},
        {"license": {"name": "MIT License"}},
    ]
    assert licences["c"] == [{"expression": "GPL-2.0-only WITH Classpath-exception-2.0"}]
    assert licences["d"] == [{"license": {"name": "SEE LICENSE IN LICENSE.md"}}]


def test_document_validates_against_the_cyclonedx_1_5_schema() -> None:
    validation = pytest.importorskip("cyclonedx.validation.json")
    from cyclonedx.schema import SchemaVersion

    doc = example_doc()
    doc_with_extras = sbom.cyclonedx(
        [
            Component(
                "x",
                "1",
                "pkg:npm/x@1",
                supplier="ACME",
                author="Jane <j@acme.test>",
                licenses=("MIT License",),
                hashes={"SHA-256": "AB" * 32},
            )
        ],
        subject_name="x",
        tool_version="0",
        timestamp=datetime(2024, 1, 9, 10, 22, 31, tzinfo=UTC),
    )
    validator = validation.JsonStrictValidator(SchemaVersion.V1_5)

    for document in (doc, doc_with_extras):
        errors = validator.validate_str(sbom.dumps(document).decode(), all_errors=True)
        assert errors is None, [str(e) for e in errors]


def test_document_serial_number_depends_on_content() -> None:
    doc = example_doc()
    other = sbom.cyclonedx([], subject_name="shop", subject_version="1.4.1", tool_version="0.1.0")

    assert example_doc()["serialNumber"] == doc["serialNumber"]
    assert other["serialNumber"] != doc["serialNumber"]


def test_document_timestamp_only_when_given() -> None:
    cet = timezone(timedelta(hours=1))
    doc = sbom.cyclonedx(
        [], subject_name="x", tool_version="0", timestamp=datetime(2024, 1, 9, 11, tzinfo=cet)
    )

    assert doc["metadata"]["timestamp"] == "2024-01-09T10:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        sbom.cyclonedx([], subject_name="x", tool_version="0", timestamp=datetime(2024, 1, 9))


def test_dumps_is_canonical() -> None:
    raw = sbom.dumps(example_doc())

    assert raw.endswith(b"}\n")
    assert raw.startswith(b'{\n  "$schema": ')
    assert raw.isascii()
    assert json.loads(raw) == example_doc()


def test_summarize_counts_by_source() -> None:
    doc = example_doc()
    doc["components"].append({"type": "library", "name": "x", "purl": "pkg:generic/x"})

    assert sbom.summarize(doc) == {"dpkg": 5, "go": 9, "npm": 5, "other": 1, "pip": 13}


# --------------------------------------------------------------------------- properties

# packageurl-python strips surrounding whitespace from every component, so the round trip
# can only hold for values without it; the encoding test below takes any text.
versions = st.text(min_size=1, max_size=30)
names = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=20)
stripped_versions = versions.filter(lambda s: s == s.strip())
stripped_names = names.filter(lambda s: s == s.strip())


@given(name=names, version=versions)
def test_purl_versions_never_carry_raw_reserved_characters(name: str, version: str) -> None:
    purl = sbom.package_url("generic", name, version, qualifiers={"arch": version})
    _, _, encoded_version = purl.partition("?")[0].rpartition("@")

    assert re.fullmatch(r"[A-Za-z0-9.\-_~:%]+", encoded_version)
    assert purl.isascii()
    assert purl.count("@") == 1
    assert purl.count("?") == 1


@given(name=stripped_names, version=stripped_versions)
def test_purls_round_trip_through_packageurl_python(name: str, version: str) -> None:
    packageurl = pytest.importorskip("packageurl")
    purl = sbom.package_url(
        "generic", name, version, namespace="some/ns", qualifiers={"k": version}
    )
    parsed = packageurl.PackageURL.from_string(purl)

    assert (parsed.namespace, parsed.name, parsed.version) == ("some/ns", name, version)
    assert parsed.qualifiers == {"k": version}
    # Not compared: parsed.to_string(). packageurl-python leaves "/" raw in versions, which the
    # spec's allowed set (ALPHA DIGIT . - _ ~ and ":") does not permit; we encode it.


ALL_COMPONENTS = (
    sbom.os_packages(DPKG_STATUS)
    + sbom.python_packages(PIP_LIST)
    + sbom.npm_packages(PACKAGE_LOCK_V3, include_dev=True, target_os=None)
    + sbom.go_modules(GO_VERSION_M)
    + sbom.go_mod_requires(GO_MOD)  # overlaps go_modules: exercises de-duplication
)


@given(shuffled=st.permutations(ALL_COMPONENTS), seed=st.integers(0, 2**32))
def test_output_is_byte_identical_for_shuffled_and_repeated_inputs(
    shuffled: list[Component], seed: int
) -> None:
    expected = sbom.dumps(sbom.cyclonedx(ALL_COMPONENTS, subject_name="shop", tool_version="1"))
    repeated = shuffled + random.Random(seed).sample(shuffled, k=len(shuffled) // 3)

    assert sbom.dumps(sbom.cyclonedx(repeated, subject_name="shop", tool_version="1")) == expected
