#!/usr/bin/env python3
"""Benchmark: noops vs buildah building the Flask example (a benchmark, not a test).

One run measures, for each side, on the same Debian base root filesystems (noops' own python
stack images, exported to buildah):

* **cold build**: noops with its layer keys and pip cache deleted (stacks, unpacked base layers
  and the compiled launcher kept); buildah with the app image and its layer cache removed (base
  images kept) and ``pip --no-cache-dir``;
* **source-only rebuild**: ``VERSION = ...`` in app.py edited, built again; noops reuses its venv
  layer by key, buildah (``--layers``, requirements installed before the source is copied) reuses
  its cached RUN step;
* **rebase**: ``noops rebase`` after ``noops stack build python --run-only`` made a new run image
  (different ``SOURCE_DATE_EPOCH``); buildah has no rebase, so for reference its time to rebuild the
  app on the new run image (its final stage's ``FROM`` changed, the pip stage cached).

Each figure is the median of ``--runs`` runs; every run works on temporary copies of the example.
Nothing outside ``--home`` (default ``/var/lib/noops-bench``, noops' ``NOOPS_HOME``; buildah's
storage root is ``HOME/buildah``, its run root ``/run/noops-bench-buildah``) is touched. Stacks are
built there on the first run (minutes, not timed). Progress goes to stderr; the table (or, with
``--json``, a JSON document) to stdout.

Usage (as root, after ``make deps``)::

    python bench/build.py --runs 3 [--json] [--keep] [--single-stage]
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
BUILDAH_APP = "localhost/noops-bench/flask:latest"
BUILDAH_BUILD_BASE = "localhost/noops-bench/build-python:stable"
BUILDAH_RUN_BASE = "localhost/noops-bench/run-python:stable"
VENV = "/layers/noops_python/venv"  # where noops' python buildpack puts it
REBASE_TARGET_S = 0.5
SOURCE_REBUILD_TARGET = 0.5
VERSION_LINE = re.compile(r'^VERSION = ".*"$', re.MULTILINE)

# The best-practice Dockerfile doing what noops does: a venv made with the build image's
# python3 and pip (requirements first, so a source edit does not re-run pip), then the venv and
# the app on the run image, owned by the CNB user (1000), gunicorn as the start command.
# The run image already sets User 1000:1000 and WorkingDir /workspace.
_PIP = (f"python3 -m venv --without-pip {VENV} && "
        f"python3 -m pip --python {VENV}/bin/python3 install --no-input --progress-bar off "
        "--no-cache-dir -r /workspace/requirements.txt")
_ENV = (f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
        "HOME=/tmp")
_CMD = 'CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--access-logfile", "-", "app:app"]'
DOCKERFILE_MULTI = f"""\
FROM {BUILDAH_BUILD_BASE} AS build
COPY --chown=1000:1000 requirements.txt /workspace/requirements.txt
RUN HOME=/tmp PIP_CERT={CA_BUNDLE} {_PIP}

FROM {BUILDAH_RUN_BASE}
{_ENV}
{_CMD}
COPY --from=build --chown=1000:1000 {VENV} {VENV}
COPY --chown=1000:1000 . /workspace
"""
# --single-stage: the app stays on the build image (no run image; no rebase reference).
DOCKERFILE_SINGLE = f"""\
FROM {BUILDAH_BUILD_BASE}
COPY --chown=1000:1000 requirements.txt /workspace/requirements.txt
RUN HOME=/tmp PIP_CERT={CA_BUNDLE} {_PIP}
{_ENV}
{_CMD}
COPY --chown=1000:1000 . /workspace
"""


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
        self.dockerfile = self.work / "Dockerfile"
        self.multi = not args.single_stage
        self.results: dict[str, Samples] = {
            k: Samples() for k in (
                "noops_cold", "buildah_cold", "noops_source", "buildah_source",
                "noops_rebase", "noops_rebase_internal", "buildah_new_base", "noops_cli_startup",
                "noops_source_new_base",
            )
        }
        self.noops_phases: dict[str, dict[str, Samples]] = {"cold": {}, "source": {}}
        self.notes: list[str] = []
        self.load: dict[str, list[float]] = {}
        self.checks: dict[str, list[Any]] = {"noops_cold_venv_new_blob": [],
                                             "noops_source_venv_reused": [],
                                             "buildah_cold_cache_hits": [],
                                             "buildah_source_cache_hits": [],
                                             "buildah_new_base_cache_hits": []}

    # -- helpers -----------------------------------------------------------------------------
    def noops_run(self, *argv: str, what: str, env: dict[str, str] | None = None) -> Proc:
        return run([*self.noops, *argv], env=env or self.noops_env, what=what)

    def buildah(self, *argv: str, what: str, check: bool = True) -> Proc:
        base = ["buildah", "--root", str(self.buildah_root), "--runroot", str(self.runroot),
                "--storage-driver", "overlay"]
        return run([*base, *argv], what=what, check=check)

    def buildah_bud(self, src: Path, what: str) -> tuple[Proc, int]:
        os.sync()  # no timed command pays for the previous step's dirty pages
        proc = self.buildah(
            "bud", "--isolation", "chroot", "--layers", "--pull=never", "--network", "host",
            "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-f", str(self.dockerfile),
            "-t", BUILDAH_APP, str(src), what=what)
        return proc, (proc.stdout + proc.stderr).count("Using cache")

    def noops_build(self, src: Path, what: str) -> tuple[float, dict[str, Any]]:
        os.sync()
        proc = self.noops_run("build", str(src), "-t", NOOPS_APP, "--json", what=what)
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

    def clear_buildah_app(self) -> None:
        """The app image and buildah's layer cache go; the base images stay."""
        self.buildah("rmi", "-f", BUILDAH_APP, what="buildah rmi app", check=False)
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
        self.dockerfile.write_text(DOCKERFILE_MULTI if self.multi else DOCKERFILE_SINGLE)
        self.buildah_root.mkdir(parents=True, exist_ok=True)
        self.clear_buildah_app()
        self.export_base("noops/build-python:stable", BUILDAH_BUILD_BASE)
        if self.multi:
            self.export_base("noops/run-python:stable", BUILDAH_RUN_BASE)
        # Warm-ups (not timed): noops compiles its launcher once (cache/tools) and unpacks the
        # stack layers once (layers/); buildah mounts its storage and base images once.
        log("warm-up builds (not timed): noops (launcher, unpacked stack layers), buildah")
        seconds, _ = self.noops_build(self.noops_src, "noops build (warm-up)")
        log(f"  noops warm-up {seconds:.1f} s")
        proc, _ = self.buildah_bud(self.buildah_src, "buildah bud (warm-up)")
        log(f"  buildah warm-up {proc.seconds:.1f} s")
        spec = importlib.util.find_spec("noops")
        if not self.args.no_pyc_cache and spec and spec.submodule_search_locations:
            # compile every noops module now, so no timed command pays for it (e.g. rebase)
            run([sys.executable, "-m", "compileall", "-q",
                 *spec.submodule_search_locations], env=self.noops_env, what="compileall noops")
        elif os.environ.get("PYTHONDONTWRITEBYTECODE"):
            self.notes.append("PYTHONDONTWRITEBYTECODE is set and --no-pyc-cache given: every "
                              "noops call recompiles its modules")
        for _ in range(max(3, self.args.runs)):
            self.results["noops_cli_startup"].add(
                self.noops_run("--version", what="noops --version").seconds)

    # -- phases ------------------------------------------------------------------------------
    def mark_load(self, when: str) -> None:
        """Record the 1/5/15-minute load averages: other work on the machine skews timings."""
        self.load[when] = [round(x, 2) for x in os.getloadavg()]

    def cold(self, i: int) -> None:
        self.clear_noops_caches()
        seconds, report = self.noops_build(self.noops_src, "noops build (cold)")
        self.results["noops_cold"].add(seconds)
        self.record_phases("cold", report)
        venv = [lay for lay in report["layers"] if lay["name"].endswith(":venv")]
        self.checks["noops_cold_venv_new_blob"].append(bool(venv and venv[0]["new_blob"]))
        self.clear_buildah_app()
        proc, hits = self.buildah_bud(self.buildah_src, "buildah bud (cold)")
        self.results["buildah_cold"].add(proc.seconds)
        self.checks["buildah_cold_cache_hits"].append(hits)
        log(f"cold #{i + 1}: noops {seconds:.2f} s (build {report['timings'].get('build_s')} s, "
            f"export {report['timings'].get('export_s')} s), buildah {proc.seconds:.2f} s "
            f"({hits} cache hits)")

    def source_only(self, i: int) -> None:
        version = f"1.0.{i + 1}"
        for src in (self.noops_src, self.buildah_src):
            self.set_version(src, version)
        seconds, report = self.noops_build(self.noops_src, "noops build (source-only)")
        self.results["noops_source"].add(seconds)
        self.record_phases("source", report)
        venv = [lay for lay in report["layers"] if lay["name"].endswith(":venv")]
        reused = bool(venv) and not venv[0]["rebuilt"] and not venv[0]["new_blob"]
        self.checks["noops_source_venv_reused"].append(reused)
        proc, hits = self.buildah_bud(self.buildah_src, "buildah bud (source-only)")
        self.results["buildah_source"].add(proc.seconds)
        self.checks["buildah_source_cache_hits"].append(hits)
        log(f"source-only #{i + 1} (VERSION {version}): noops {seconds:.2f} s "
            f"(venv reused: {reused}), buildah {proc.seconds:.2f} s ({hits} cache hits)")

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
        if self.multi:
            self.export_base("noops/run-python:stable", BUILDAH_RUN_BASE)
            bud, hits = self.buildah_bud(self.buildah_src, "buildah bud (new run image)")
            self.results["buildah_new_base"].add(bud.seconds)
            self.checks["buildah_new_base_cache_hits"].append(hits)
            msg += f"; buildah rebuild on the new run image {bud.seconds:.2f} s ({hits} cache hits)"
        log(msg)
        # informational: the first noops build (a source edit) after the run image changed
        self.set_version(self.noops_src, f"1.1.{i + 1}")
        seconds, report = self.noops_build(self.noops_src, "noops build (after new run image)")
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
        # containers/storage may leave its overlay home bind-mounted; release it
        mounts = run(["findmnt", "-rn", "-o", "TARGET"], what="findmnt", check=False).stdout
        for target in sorted(mounts.split(), key=len, reverse=True):
            if target.startswith((str(self.buildah_root), str(self.runroot))):
                run(["umount", target], what=f"umount {target}", check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)
        log(f"cleaned up: {self.work}, buildah images/containers; kept the stacks in {self.home}")

    # -- report ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        r = {k: v.to_json() for k, v in self.results.items()}

        def ratio(a: str, b: str) -> float | None:
            x, y = self.results[a].median, self.results[b].median
            return round(x / y, 3) if x is not None and y else None

        return {
            "runs": self.args.runs,
            "dockerfile": "multi-stage" if self.multi else "single-stage",
            "noops_home": str(self.home),
            "results": r,
            "ratios": {"cold": ratio("noops_cold", "buildah_cold"),
                       "source_only": ratio("noops_source", "buildah_source")},
            "targets": {"source_only_ratio": SOURCE_REBUILD_TARGET, "rebase_s": REBASE_TARGET_S},
            "noops_phases": {kind: {k: v.to_json() for k, v in phases.items()}
                             for kind, phases in self.noops_phases.items()},
            "checks": self.checks,
            "load_average": self.load,
            "cpus": os.cpu_count(),
            "notes": self.notes,
        }

    def print_table(self) -> None:
        def fmt(s: Samples) -> str:
            if s.median is None:
                return "n/a"
            spread = f" ({min(s.values):.2f}–{max(s.values):.2f})" if len(s.values) > 1 else ""
            return f"{s.median:.2f} s{spread}"

        def ratio(a: str, b: str) -> str:
            x, y = self.results[a].median, self.results[b].median
            return f"{x / y:.2f}" if x is not None and y else "n/a"

        r = self.results
        rows = [
            ("cold build", fmt(r["noops_cold"]), fmt(r["buildah_cold"]),
             ratio("noops_cold", "buildah_cold"), ""),
            ("source-only rebuild", fmt(r["noops_source"]), fmt(r["buildah_source"]),
             ratio("noops_source", "buildah_source"), f"ratio <= {SOURCE_REBUILD_TARGET}"),
            ("rebase (buildah: rebuild on new base)", fmt(r["noops_rebase"]),
             fmt(r["buildah_new_base"]), ratio("noops_rebase", "buildah_new_base"),
             f"noops <= {REBASE_TARGET_S} s"),
            ("(info) source edit, 1st build on new base", fmt(r["noops_source_new_base"]),
             fmt(r["buildah_new_base"]), ratio("noops_source_new_base", "buildah_new_base"), ""),
        ]
        head = ("phase", "noops median (min–max)", "buildah median (min–max)", "ratio", "target")
        widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(5)]
        print(f"noops vs buildah 1.28 (overlay, chroot isolation, --layers; "
              f"{'multi' if self.multi else 'single'}-stage Dockerfile), Flask example, "
              f"{self.args.runs} run(s) each")
        for row in [head, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        print()
        for kind, label in (("cold", "cold"), ("source", "source-only")):
            phases = self.noops_phases[kind]
            if phases:
                parts = ", ".join(f"{k.removesuffix('_s')} {v.median:.2f} s"
                                  for k, v in phases.items() if v.median is not None)
                print(f"noops {label} phases (median, inside the process): {parts}")
        startup = r["noops_cli_startup"].median
        inside = r["noops_rebase_internal"].median
        if startup is not None:
            print(f"noops CLI start-up (`noops --version`): {startup:.2f} s"
                  + (f"; rebase inside the process: {inside:.3f} s" if inside is not None else ""))
        print(f"checks: {json.dumps(self.checks)}")
        print(f"load average (1/5/15 min) at each phase start: {json.dumps(self.load)}")
        for note in self.notes:
            print(f"note: {note}")
        print()
        cold_n, cold_b = r["noops_cold"].median, r["buildah_cold"].median
        src_n, src_b = r["noops_source"].median, r["buildah_source"].median
        reb = r["noops_rebase"].median
        if cold_n is not None and cold_b:
            print(f"cold build: noops {cold_n:.1f} s, buildah {cold_b:.1f} s, "
                  f"ratio {cold_n / cold_b:.2f}")
        if src_n is not None and src_b:
            print(f"source-only rebuild: noops {src_n:.1f} s, buildah {src_b:.1f} s, "
                  f"ratio {src_n / src_b:.2f} (target <= {SOURCE_REBUILD_TARGET})")
        if reb is not None:
            ref = r["buildah_new_base"].median
            tail = f"; buildah rebuild on the new base {ref:.1f} s" if ref is not None else ""
            print(f"rebase: noops {reb:.2f} s (target <= {REBASE_TARGET_S} s){tail}")

    def add_notes(self) -> None:
        cold_new = self.checks["noops_cold_venv_new_blob"]
        if cold_new and not all(cold_new):
            self.notes.append("noops' cold venv layer had the same diffID as an earlier build, so "
                              "its blob was not compressed again (store not emptied between runs)")
        if any(not ok for ok in self.checks["noops_source_venv_reused"]):
            self.notes.append("noops did NOT reuse the venv layer on a source-only rebuild")
        if any(h < 1 for h in self.checks["buildah_source_cache_hits"]):
            self.notes.append("buildah did not use its layer cache on a source-only rebuild")
        if any(h > 0 for h in self.checks["buildah_cold_cache_hits"]):
            self.notes.append("buildah's cold build hit its cache: the cold numbers are not cold")
        busy = {k: v[0] for k, v in self.load.items() if v[0] > 0.5 * (os.cpu_count() or 1)}
        if busy:
            self.notes.append(f"the machine was busy (1-min load average {busy} on "
                              f"{os.cpu_count()} CPUs): other work skews these timings")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--keep", action="store_true", help="leave temp dirs and buildah images")
    parser.add_argument("--json", action="store_true", help="print a JSON document, no table")
    parser.add_argument("--home", default="/var/lib/noops-bench",
                        help="NOOPS_HOME for the benchmark (buildah storage goes in HOME/buildah)")
    parser.add_argument("--runroot", default="/run/noops-bench-buildah", help="buildah's runroot")
    parser.add_argument("--single-stage", action="store_true",
                        help="buildah: one stage on the build image (no run image, no rebase "
                             "reference) instead of build stage + run image")
    parser.add_argument("--no-pyc-cache", action="store_true",
                        help="run noops with the caller's PYTHONDONTWRITEBYTECODE as is (by default "
                             "noops' bytecode is cached under HOME/cache/pycache)")
    parser.add_argument("--skip-rebase", action="store_true",
                        help="skip the rebase phase (it builds a new run image per run)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    bench = Bench(args)
    try:
        bench.setup()
        bench.mark_load("cold")
        for i in range(args.runs):
            bench.cold(i)
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
