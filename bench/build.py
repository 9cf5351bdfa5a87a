#!/usr/bin/env python3
"""Benchmark: noops vs buildah building the Flask example (a benchmark, not a test).

One run measures, on the same Debian base root filesystems (noops' own python stack images,
copied into buildah's storage), for noops and for buildah 1.28 (overlay storage, chroot
isolation, ``--layers``) with two best-practice Dockerfiles -- *multi-stage* (venv built on the
build image, app shipped on the run image: the same image noops makes) and *single-stage*
(everything on the build image):

* **cold build**: noops with its layer keys, pip cache and app-layer records deleted (stacks,
  unpacked base layers and the compiled launcher kept); buildah with the app images and its
  layer cache removed (base images kept) and ``pip --no-cache-dir``;
* **source-only rebuild**: ``VERSION = ...`` in app.py edited, built again; noops reuses its venv
  layer by key, buildah (requirements installed before the source is copied) its cached RUN;
* **rebase**: ``noops rebase`` after ``noops stack build python --run-only`` made a new run image
  (different ``SOURCE_DATE_EPOCH``); buildah has no rebase, so for reference its time to rebuild
  the app on the new run image (multi-stage: the final stage's ``FROM`` changed).

Each figure is the median of ``--runs`` runs on temporary copies of the example. Nothing outside
``--home`` (default ``/var/lib/noops-bench``: noops' ``NOOPS_HOME``; buildah's storage root is
``HOME/buildah``) and ``--runroot`` (``/run/noops-bench-buildah``) is touched. Stacks are built
there on the first run (minutes, not timed). Progress goes to stderr; the table (or, with
``--json``, a JSON document) to stdout.

Usage (as root, after ``make deps``)::

    python bench/build.py --runs 3 [--json] [--keep]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flask"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
NOOPS_APP = "bench-flask:latest"
BUILDAH_BUILD_BASE = "localhost/noops-bench/build-python:stable"
BUILDAH_RUN_BASE = "localhost/noops-bench/run-python:stable"
VENV = "/layers/noops_python/venv"  # where noops' python buildpack puts it
REBASE_TARGET_S = 0.5
SOURCE_REBUILD_TARGET = 0.5
VERSION_LINE = re.compile(r'^VERSION = ".*"$', re.MULTILINE)

# What noops' python buildpack does, as Dockerfiles: a venv made with the build image's python3
# and pip as uid 1000 (requirements copied and installed before the source, so a source edit
# does not re-run pip), the app owned by uid 1000, gunicorn as the start command. The stack
# images already set User 1000:1000 and WorkingDir /workspace.
_PIP = (f"RUN HOME=/tmp PIP_CERT={CA_BUNDLE} python3 -m venv --without-pip {VENV} && "
        f"HOME=/tmp PIP_CERT={CA_BUNDLE} python3 -m pip --python {VENV}/bin/python3 install "
        "--no-input --progress-bar off --no-cache-dir -r /workspace/requirements.txt")
_ENV = (f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
        "HOME=/tmp")
_CMD = 'CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--access-logfile", "-", "app:app"]'
_REQS = "COPY --chown=1000:1000 requirements.txt /workspace/requirements.txt"
_APP = "COPY --chown=1000:1000 . /workspace"
DOCKERFILES = {
    # the same image noops makes: run image + venv + app
    "multi": "\n".join([
        f"FROM {BUILDAH_BUILD_BASE} AS build", _REQS, _PIP, "",
        f"FROM {BUILDAH_RUN_BASE}", _ENV, _CMD,
        f"COPY --from=build --chown=1000:1000 {VENV} {VENV}", _APP, "",
    ]),
    # the app left on the build image (bigger image, less work; no run image to rebase onto)
    "single": "\n".join([f"FROM {BUILDAH_BUILD_BASE}", _REQS, _PIP, _ENV, _CMD, _APP, ""]),
}
BUILDAH_TAGS = {v: f"localhost/noops-bench/flask-{v}:latest" for v in DOCKERFILES}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


@dataclass
class Proc:
    seconds: float
    stdout: str
    stderr: str


def run(cmd: list[str], *, env: dict[str, str] | None = None, what: str,
        check: bool = True) -> Proc:
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if check and result.returncode != 0:
        tail = "\n".join((result.stderr + "\n" + result.stdout).strip().splitlines()[-40:])
        raise BenchError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")
    return Proc(seconds, result.stdout, result.stderr)


def noops_cmd() -> list[str]:
    """The noops of this interpreter: its console script if beside it, else ``-m noops``."""
    script = Path(sys.executable).parent / "noops"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "noops"]


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(round(value, 3))

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def to_json(self) -> dict[str, Any]:
        return {"median_s": self.median, "runs_s": self.values}


RESULT_KEYS = (
    "noops_cold", "buildah_multi_cold", "buildah_single_cold",
    "noops_source", "buildah_multi_source", "buildah_single_source",
    "noops_rebase", "noops_rebase_internal", "buildah_multi_new_base",
    "noops_source_new_base", "noops_cli_startup",
)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(args.home)
        self.buildah_root = self.home / "buildah"
        self.runroot = Path(args.runroot)
        self.noops = noops_cmd()
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
        env["NOOPS_HOME"] = str(self.home)
        if not args.no_pyc_cache:
            # An installed noops has its bytecode cached; a PYTHONDONTWRITEBYTECODE=1 shell
            # would make every noops call recompile its modules (~0.07 s here). The cache goes
            # under the bench home, never into the source tree.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.home / "cache" / "pycache")
        self.noops_env = env
        self.work = Path(tempfile.mkdtemp(prefix="noops-bench-"))
        self.noops_src = self.work / "noops-app" / "flask"
        self.buildah_src = self.work / "buildah-app" / "flask"
        self.dockerfiles = {v: self.work / f"Dockerfile.{v}" for v in DOCKERFILES}
        self.results: dict[str, Samples] = {k: Samples() for k in RESULT_KEYS}
        self.noops_phases: dict[str, dict[str, Samples]] = {"cold": {}, "source": {}}
        self.notes: list[str] = []
        self.load: dict[str, list[float]] = {}
        self.checks: dict[str, list[Any]] = {
            "noops_cold_venv_new_blob": [], "noops_source_venv_reused": [],
            **{f"buildah_{v}_{p}_cache_hits": [] for v in DOCKERFILES for p in ("cold", "source")},
            "buildah_multi_new_base_cache_hits": [],
        }

    # -- helpers -----------------------------------------------------------------------------
    def noops_run(self, *argv: str, what: str, env: dict[str, str] | None = None) -> Proc:
        return run([*self.noops, *argv], env=env or self.noops_env, what=what)

    def buildah(self, *argv: str, what: str, check: bool = True) -> Proc:
        base = ["buildah", "--root", str(self.buildah_root), "--runroot", str(self.runroot),
                "--storage-driver", "overlay"]
        return run([*base, *argv], what=what, check=check)

    def buildah_bud(self, variant: str, what: str) -> tuple[float, int]:
        """One ``buildah bud --layers``; (seconds, number of cache hits)."""
        os.sync()  # no timed command pays for the previous step's dirty pages
        proc = self.buildah(
            "bud", "--isolation", "chroot", "--layers", "--pull=never", "--network", "host",
            "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-f", str(self.dockerfiles[variant]),
            "-t", BUILDAH_TAGS[variant], str(self.buildah_src), what=f"{what} ({variant}-stage)")
        return proc.seconds, (proc.stdout + proc.stderr).count("Using cache")

    def noops_build(self, what: str) -> tuple[float, dict[str, Any]]:
        os.sync()
        proc = self.noops_run("build", str(self.noops_src), "-t", NOOPS_APP, "--json", what=what)
        return proc.seconds, json.loads(proc.stdout)

    @staticmethod
    def set_version(src: Path, version: str) -> None:
        app = src / "app.py"
        text, n = VERSION_LINE.subn(f'VERSION = "{version}"', app.read_text())
        if n != 1:
            raise BenchError(f"{app} has no `VERSION = \"...\"` line to edit")
        app.write_text(text)

    def record_phases(self, kind: str, report: dict[str, Any]) -> None:
        for key, value in report.get("timings", {}).items():
            self.noops_phases[kind].setdefault(key, Samples()).add(float(value))

    @staticmethod
    def venv_layer(report: dict[str, Any]) -> dict[str, Any] | None:
        return next((lay for lay in report["layers"] if lay["name"].endswith(":venv")), None)

    def mark_load(self, when: str) -> None:
        """Record the 1/5/15-minute load averages: other work on the machine skews timings."""
        self.load[when] = [round(x, 2) for x in os.getloadavg()]

    # -- setup -------------------------------------------------------------------------------
    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("run as root: noops builds under runc and buildah uses overlay storage")
        for tool in ("buildah", "runc", "mmdebstrap"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is not installed: run `make deps` first")
        if not Path(CA_BUNDLE).is_file():
            raise BenchError(f"{CA_BUNDLE} is missing (apt-get install ca-certificates)")
        version = run(["buildah", "--version"], what="buildah --version").stdout.strip()
        log(f"{version}; noops: {' '.join(self.noops)}; NOOPS_HOME={self.home}; "
            f"buildah root {self.buildah_root}, runroot {self.runroot}; work dir {self.work}")
        self.home.mkdir(parents=True, exist_ok=True)

    def ensure_stacks(self) -> None:
        rows = json.loads(self.noops_run("stack", "list", "--json", what="noops stack list").stdout)
        have = {r["stack"]: bool(r.get("build")) and bool(r.get("run")) for r in rows}
        # python: the app's stack; static: its build image compiles noops' launcher
        for stack in ("python", "static"):
            if have.get(stack):
                continue
            log(f"stack {stack} is missing in {self.home}: building it (once; minutes; NOT timed)")
            proc = self.noops_run("stack", "build", stack, "--json", what=f"noops stack build {stack}")
            log(f"stack {stack} built in {proc.seconds:.0f} s")

    def export_base(self, ref: str, local: str) -> None:
        """Copy a noops stack image from noops' OCI layout into buildah's storage as ``local``."""
        src = f"oci:{self.home / 'images'}:{ref}"
        proc = self.buildah("pull", "--quiet", src, what=f"buildah pull {src}")
        image_id = proc.stdout.strip().splitlines()[-1]
        self.buildah("tag", image_id, local, what=f"buildah tag {local}")
        log(f"buildah: {local} = {ref} ({image_id[:12]}, {proc.seconds:.1f} s, not timed)")

    def clear_buildah_apps(self) -> None:
        """The app images and buildah's layer cache go; the base images stay."""
        for tag in BUILDAH_TAGS.values():
            self.buildah("rmi", "-f", tag, what="buildah rmi app", check=False)
        self.buildah("rmi", "--prune", what="buildah rmi --prune", check=False)

    def clear_noops_caches(self) -> None:
        for sub in ("cache/layer-keys", "cache/build"):
            shutil.rmtree(self.home / sub, ignore_errors=True)
        self.forget_app_layers()

    def forget_app_layers(self) -> None:
        """Make noops write every app layer blob again, as buildah must after ``rmi --prune``.

        noops' layers are reproducible: a cold pip install yields the venv tar of the last
        build, and the store would reuse its blob without compressing it. Its diffID → blob
        records (``images/noops/diffids``) are dropped for every layer that is not in a stack
        image (tags ``noops/...``), so the next build compresses and stores them anew.
        """
        images = self.home / "images"
        records = images / "noops" / "diffids"
        if not records.is_dir():
            return

        def blob(digest: str) -> dict[str, Any]:
            data: dict[str, Any] = json.loads(
                (images / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())
            return data

        keep: set[str] = set()
        index = json.loads((images / "index.json").read_text())
        for entry in index.get("manifests", []):
            name = entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
            if name.startswith("noops/"):
                config = blob(blob(entry["digest"])["config"]["digest"])
                keep.update(d.split(":", 1)[1] for d in config["rootfs"]["diff_ids"])
        for record in records.iterdir():
            if record.name.split(".", 1)[0] not in keep:
                record.unlink()

    def setup(self) -> None:
        self.preflight()
        self.ensure_stacks()
        for dest in (self.noops_src, self.buildah_src):
            shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for variant, path in self.dockerfiles.items():
            path.write_text(DOCKERFILES[variant])
        self.buildah_root.mkdir(parents=True, exist_ok=True)
        self.clear_buildah_apps()
        self.export_base("noops/build-python:stable", BUILDAH_BUILD_BASE)
        self.export_base("noops/run-python:stable", BUILDAH_RUN_BASE)
        spec = importlib.util.find_spec("noops")
        if not self.args.no_pyc_cache and spec and spec.submodule_search_locations:
            # compile every noops module now, so no timed command pays for it (e.g. rebase)
            run([sys.executable, "-m", "compileall", "-q",
                 *spec.submodule_search_locations], env=self.noops_env, what="compileall noops")
        elif os.environ.get("PYTHONDONTWRITEBYTECODE"):
            self.notes.append("PYTHONDONTWRITEBYTECODE is set and --no-pyc-cache given: every "
                              "noops call recompiles its modules")
        # Warm-ups (not timed): noops compiles its launcher once (cache/tools) and unpacks the
        # stack layers once (layers/); buildah sets up its storage and mounts the bases once.
        log("warm-up builds (not timed): noops (launcher, unpacked stack layers), buildah")
        seconds, _ = self.noops_build("noops build (warm-up)")
        log(f"  noops warm-up {seconds:.1f} s")
        for variant in DOCKERFILES:
            seconds, _ = self.buildah_bud(variant, "buildah bud (warm-up)")
            log(f"  buildah {variant}-stage warm-up {seconds:.1f} s")
        for _ in range(max(3, self.args.runs)):
            self.results["noops_cli_startup"].add(
                self.noops_run("--version", what="noops --version").seconds)

    # -- phases ------------------------------------------------------------------------------
    def cold(self, i: int) -> None:
        self.clear_noops_caches()
        seconds, report = self.noops_build("noops build (cold)")
        self.results["noops_cold"].add(seconds)
        self.record_phases("cold", report)
        venv = self.venv_layer(report)
        self.checks["noops_cold_venv_new_blob"].append(bool(venv and venv["new_blob"]))
        msg = (f"cold #{i + 1}: noops {seconds:.2f} s (build {report['timings'].get('build_s')} s, "
               f"export {report['timings'].get('export_s')} s)")
        for variant in DOCKERFILES:
            self.clear_buildah_apps()  # also the other variant's cache: they share the pip step
            b_seconds, hits = self.buildah_bud(variant, "buildah bud (cold)")
            self.results[f"buildah_{variant}_cold"].add(b_seconds)
            self.checks[f"buildah_{variant}_cold_cache_hits"].append(hits)
            msg += f", buildah {variant}-stage {b_seconds:.2f} s ({hits} cache hits)"
        log(msg)

    def prime_buildah(self) -> None:
        """After the cold runs only the last variant has a cache: build both again (untimed)."""
        for variant in DOCKERFILES:
            self.buildah_bud(variant, "buildah bud (re-prime)")

    def source_only(self, i: int) -> None:
        version = f"1.0.{i + 1}"
        for src in (self.noops_src, self.buildah_src):
            self.set_version(src, version)
        seconds, report = self.noops_build("noops build (source-only)")
        self.results["noops_source"].add(seconds)
        self.record_phases("source", report)
        venv = self.venv_layer(report)
        reused = venv is not None and not venv["rebuilt"] and not venv["new_blob"]
        self.checks["noops_source_venv_reused"].append(reused)
        msg = f"source-only #{i + 1} (VERSION {version}): noops {seconds:.2f} s (venv reused: {reused})"
        for variant in DOCKERFILES:
            b_seconds, hits = self.buildah_bud(variant, "buildah bud (source-only)")
            self.results[f"buildah_{variant}_source"].add(b_seconds)
            self.checks[f"buildah_{variant}_source_cache_hits"].append(hits)
            msg += f", buildah {variant}-stage {b_seconds:.2f} s ({hits} cache hits)"
        log(msg)

    def rebase(self, i: int) -> None:
        epoch = int(time.time()) + i  # a different SOURCE_DATE_EPOCH → a new run image
        env = dict(self.noops_env, SOURCE_DATE_EPOCH=str(epoch))
        log(f"rebase #{i + 1}: noops stack build python --run-only "
            f"(SOURCE_DATE_EPOCH={epoch}; NOT timed)")
        built = self.noops_run("stack", "build", "python", "--run-only", "--json", env=env,
                               what="noops stack build python --run-only")
        log(f"  new run image in {built.seconds:.0f} s")
        os.sync()
        proc = self.noops_run("rebase", NOOPS_APP, "--json", what="noops rebase")
        data = json.loads(proc.stdout)
        self.results["noops_rebase"].add(proc.seconds)
        self.results["noops_rebase_internal"].add(float(data.get("seconds", 0.0)))
        msg = (f"  noops rebase {proc.seconds:.3f} s wall ({data.get('seconds')} s inside; "
               f"{data.get('swapped')} base layer(s) swapped, {data.get('kept')} kept)")
        self.export_base("noops/run-python:stable", BUILDAH_RUN_BASE)
        b_seconds, hits = self.buildah_bud("multi", "buildah bud (new run image)")
        self.results["buildah_multi_new_base"].add(b_seconds)
        self.checks["buildah_multi_new_base_cache_hits"].append(hits)
        log(msg + f"; buildah multi-stage rebuild on the new run image {b_seconds:.2f} s "
            f"({hits} cache hits)")
        # informational: the first noops build (a source edit) after the run image changed
        self.set_version(self.noops_src, f"1.1.{i + 1}")
        seconds, report = self.noops_build("noops build (after new run image)")
        self.results["noops_source_new_base"].add(seconds)
        log(f"  noops source-only rebuild, first on the new run image: {seconds:.2f} s "
            f"(export {report['timings'].get('export_s')} s)")

    # -- teardown ----------------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.args.keep:
            log(f"--keep: leaving {self.work}, buildah's images in {self.buildah_root}, "
                f"and the noops image {NOOPS_APP} in {self.home}")
            return
        shutil.rmtree(self.work, ignore_errors=True)
        self.buildah("rm", "--all", what="buildah rm --all", check=False)
        self.buildah("rmi", "--all", "--force", what="buildah rmi --all", check=False)
        # containers/storage may leave its overlay home mounted; release anything left
        mounts = run(["findmnt", "-rn", "-o", "TARGET"], what="findmnt", check=False).stdout
        for target in sorted(mounts.split(), key=len, reverse=True):
            if target.startswith((str(self.buildah_root), str(self.runroot))):
                run(["umount", target], what=f"umount {target}", check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)
        log(f"cleaned up: {self.work}, buildah images/containers; kept the stacks in {self.home}")

    # -- report ------------------------------------------------------------------------------
    def ratio(self, a: str, b: str) -> float | None:
        x, y = self.results[a].median, self.results[b].median
        return round(x / y, 3) if x is not None and y else None

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.args.runs,
            "noops_home": str(self.home),
            "dockerfiles": DOCKERFILES,
            "results": {k: v.to_json() for k, v in self.results.items()},
            "ratios": {f"{phase}_vs_{v}_stage": self.ratio(f"noops_{phase}", f"buildah_{v}_{phase}")
                       for phase in ("cold", "source") for v in DOCKERFILES},
            "targets": {"source_ratio_max": SOURCE_REBUILD_TARGET, "rebase_s_max": REBASE_TARGET_S},
            "noops_phases": {kind: {k: v.to_json() for k, v in phases.items()}
                             for kind, phases in self.noops_phases.items()},
            "checks": self.checks,
            "load_average": self.load,
            "cpus": os.cpu_count(),
            "notes": self.notes,
        }

    def print_table(self) -> None:
        r = self.results

        def fmt(key: str) -> str:
            s = r[key]
            if s.median is None:
                return "n/a"
            spread = f" ({min(s.values):.2f}–{max(s.values):.2f})" if len(s.values) > 1 else ""
            return f"{s.median:.2f} s{spread}"

        def rat(a: str, b: str) -> str:
            value = self.ratio(a, b)
            return "n/a" if value is None else f"{value:.2f}"

        rows = [
            ("cold build", fmt("noops_cold"), fmt("buildah_multi_cold"),
             rat("noops_cold", "buildah_multi_cold"), fmt("buildah_single_cold"),
             rat("noops_cold", "buildah_single_cold"), ""),
            ("source-only rebuild", fmt("noops_source"), fmt("buildah_multi_source"),
             rat("noops_source", "buildah_multi_source"), fmt("buildah_single_source"),
             rat("noops_source", "buildah_single_source"), f"ratio <= {SOURCE_REBUILD_TARGET}"),
            ("rebase (buildah: rebuild on new base)", fmt("noops_rebase"),
             fmt("buildah_multi_new_base"), rat("noops_rebase", "buildah_multi_new_base"),
             "n/a", "n/a", f"noops <= {REBASE_TARGET_S} s"),
            ("(info) 1st source rebuild on new base", fmt("noops_source_new_base"),
             fmt("buildah_multi_new_base"), rat("noops_source_new_base", "buildah_multi_new_base"),
             "n/a", "n/a", ""),
        ]
        head = ("phase", "noops median (min–max)", "buildah multi-stage", "ratio",
                "buildah single-stage", "ratio", "target")
        widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
        print(f"noops vs buildah 1.28 (overlay, chroot isolation, --layers), Flask example, "
              f"{self.args.runs} run(s) each, medians")
        for row in [head, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        print()
        for kind, label in (("cold", "cold"), ("source", "source-only")):
            phases = self.noops_phases[kind]
            if phases:
                parts = ", ".join(f"{k.removesuffix('_s')} {v.median:.2f} s"
                                  for k, v in phases.items() if v.median is not None)
                print(f"noops {label} phases (median, inside the process): {parts}")
        startup, inside = r["noops_cli_startup"].median, r["noops_rebase_internal"].median
        if startup is not None:
            print(f"noops CLI start-up (`noops --version`): {startup:.2f} s"
                  + (f"; rebase inside the process: {inside:.3f} s" if inside is not None else ""))
        print(f"checks: {json.dumps(self.checks)}")
        print(f"load average (1/5/15 min) at each phase start, {os.cpu_count()} CPUs: "
              f"{json.dumps(self.load)}")
        for note in self.notes:
            print(f"note: {note}")
        print()
        self.print_summary()

    def print_summary(self) -> None:
        r = self.results
        for phase, label, target in (("cold", "cold build", ""),
                                     ("source", "source-only rebuild",
                                      f" (target <= {SOURCE_REBUILD_TARGET})")):
            n, b = r[f"noops_{phase}"].median, r[f"buildah_multi_{phase}"].median
            single = r[f"buildah_single_{phase}"].median
            if n is None or not b:
                continue
            line = f"{label}: noops {n:.1f} s, buildah {b:.1f} s, ratio {n / b:.2f}{target}"
            if single:
                line += (f"  [multi-stage Dockerfile; single-stage: buildah {single:.1f} s, "
                         f"ratio {n / single:.2f}]")
            print(line)
        reb = r["noops_rebase"].median
        if reb is not None:
            ref = r["buildah_multi_new_base"].median
            tail = (f"  [buildah rebuild on the new base: {ref:.1f} s]" if ref is not None else "")
            print(f"rebase: noops {reb:.2f} s (target <= {REBASE_TARGET_S} s){tail}")

    def add_notes(self) -> None:
        cold_new = self.checks["noops_cold_venv_new_blob"]
        if cold_new and not all(cold_new):
            self.notes.append("noops reused an earlier venv blob in a cold build")
        if not all(self.checks["noops_source_venv_reused"]):
            self.notes.append("noops did NOT reuse the venv layer on a source-only rebuild")
        for variant in DOCKERFILES:
            if any(h < 1 for h in self.checks[f"buildah_{variant}_source_cache_hits"]):
                self.notes.append(f"buildah ({variant}-stage) did not use its layer cache on a "
                                  "source-only rebuild")
            if any(h > 0 for h in self.checks[f"buildah_{variant}_cold_cache_hits"]):
                self.notes.append(f"buildah's ({variant}-stage) cold build hit its cache")
        # the bench itself keeps ~1.5-2 CPUs busy; only the load before it started is someone else's
        before = self.load.get("start", [0.0])[0]
        if before > 0.5 * (os.cpu_count() or 1):
            self.notes.append(f"the machine was busy before the bench started (1-min load average "
                              f"{before} on {os.cpu_count()} CPUs): other work may skew the timings")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--keep", action="store_true", help="leave temp dirs and buildah images")
    parser.add_argument("--json", action="store_true", help="print a JSON document, no table")
    parser.add_argument("--home", default="/var/lib/noops-bench",
                        help="NOOPS_HOME for the benchmark (buildah storage goes in HOME/buildah)")
    parser.add_argument("--runroot", default="/run/noops-bench-buildah", help="buildah's runroot")
    parser.add_argument("--no-pyc-cache", action="store_true",
                        help="run noops with the caller's PYTHONDONTWRITEBYTECODE as is (by default "
                             "noops' bytecode is cached under HOME/cache/pycache)")
    parser.add_argument("--skip-rebase", action="store_true",
                        help="skip the rebase phase (it builds a new run image per run)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    bench = Bench(args)
    bench.mark_load("start")
    try:
        bench.setup()
        bench.mark_load("cold")
        for i in range(args.runs):
            bench.cold(i)
        bench.prime_buildah()
        bench.mark_load("source-only")
        for i in range(args.runs):
            bench.source_only(i)
        if not args.skip_rebase:
            bench.mark_load("rebase")
            for i in range(args.runs):
                bench.rebase(i)
        bench.mark_load("end")
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
    bench.add_notes()
    if args.json:
        print(json.dumps(bench.to_json(), indent=2))
    else:
        bench.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
