"""Procfile / noops.toml parsing and buildpack detection, explained."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from noops.appspec import load_appspec, parse_procfile
from noops.build.buildpacks.python import _poetry_constraint, requirements_for
from noops.build.lifecycle import detect
from noops.errors import BuildError, DetectError, UsageError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(("example", "buildpack"), [
    ("flask", "noops/python"), ("fastapi", "noops/python"), ("express", "noops/node"),
    ("go", "noops/go"), ("static", "noops/static"),
])
def test_examples_detect(example: str, buildpack: str) -> None:
    report = detect(EXAMPLES / example)
    assert report.buildpack.id == buildpack
    passed = [e["buildpack"] for e in report.explanations if e["passed"]]
    assert buildpack in passed


def test_empty_folder_lists_what_each_buildpack_looks_for(tmp_path: Path) -> None:
    with pytest.raises(DetectError) as err:
        detect(tmp_path)
    message = str(err.value)
    for needle in ("requirements.txt", "package.json", "go.mod", "index.html"):
        assert needle in message


def test_procfile_parsing_and_errors() -> None:
    procs = parse_procfile("# comment\nweb: gunicorn app:app\nworker:  python w.py\n")
    assert procs["web"].command == ("gunicorn app:app",) and not procs["web"].direct
    assert procs["worker"].command == ("python w.py",)
    with pytest.raises(UsageError, match="line 1"):
        parse_procfile("just a command")


def test_procfile_beats_noops_toml(tmp_path: Path) -> None:
    (tmp_path / "noops.toml").write_text('[processes]\nweb = "a"\nworker = {command=["b","c"]}\n')
    (tmp_path / "Procfile").write_text("web: z\n")
    spec = load_appspec(tmp_path)
    assert spec.processes["web"].command == ("z",)
    assert spec.processes["worker"].command == ("b", "c") and spec.processes["worker"].direct


def test_invalid_noops_toml_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "noops.toml").write_text("[processes]\nweb = 3\n")
    with pytest.raises(UsageError, match=r"processes\.web"):
        load_appspec(tmp_path)
    (tmp_path / "noops.toml").write_text("not toml ===")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_appspec(tmp_path)


def test_procfile_without_web_is_refused_at_detect(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "flask", tmp_path / "app")
    (tmp_path / "app" / "Procfile").write_text("worker: python worker.py\n")
    with pytest.raises(BuildError, match="no `web` process"):
        detect(tmp_path / "app")


@pytest.mark.parametrize(("spec", "expected"), [
    ("^1.2.3", "x>=1.2.3,<2"), ("^0.2.3", "x>=0.2.3,<0.3"), ("~1.2", "x>=1.2,<1.3"),
    ("*", "x"), ("1.0", "x==1.0"), (">=2", "x>=2"),
])
def test_poetry_constraints(spec: str, expected: str) -> None:
    assert _poetry_constraint("x", spec) == expected


def test_uv_lock_pins_exclude_the_project(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "My_App"\ndependencies = ["flask"]\n')
    (tmp_path / "uv.lock").write_text(
        'version = 1\n[[package]]\nname = "my-app"\nversion = "0.1.0"\nsource = { editable = "." }\n'
        '[[package]]\nname = "flask"\nversion = "3.1.0"\n[[package]]\nname = "click"\nversion = "8.1.7"\n'
    )
    installer, args, _ = requirements_for(tmp_path)
    assert installer == "uv"
    assert args == ["click==8.1.7", "flask==3.1.0"]
