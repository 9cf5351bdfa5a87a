"""Reproducible layer tars: the same content always gives the same diffID."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noops.errors import ImageError
from noops.oci.layer import NORMALIZED_MTIME, LayerSpec, source_date_epoch, write_tar


def _tree(root: Path, mtime: int) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("print('a')\n")
    (root / "pkg" / "sub" / "b.txt").write_text("b\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("pkg/a.py", root / "link")
    os.link(root / "pkg" / "a.py", root / "hard.py")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _diff(tmp: Path, name: str, mtime: int) -> tuple[str, Path]:
    src = tmp / name
    src.mkdir()
    _tree(src, mtime)
    spec = LayerSpec(uid=1000, gid=1000)
    spec.add_tree(src, "workspace")
    result = write_tar(spec, tmp / f"{name}.tar")
    return result.diff_id, result.path


def test_same_content_same_diff_id_across_dirs_and_times(tmp_path: Path) -> None:
    one, _ = _diff(tmp_path, "one", 1_600_000_000)
    two, _ = _diff(tmp_path, "two", 1_700_000_000)
    assert one == two


def test_content_change_changes_diff_id(tmp_path: Path) -> None:
    one, _ = _diff(tmp_path, "one", 1)
    src = tmp_path / "two"
    src.mkdir()
    _tree(src, 1)
    (src / "pkg" / "a.py").write_text("print('changed')\n")
    spec = LayerSpec(uid=1000, gid=1000)
    spec.add_tree(src, "workspace")
    assert write_tar(spec, tmp_path / "x.tar").diff_id != one


def test_tar_shape_is_normalized(tmp_path: Path) -> None:
    _, path = _diff(tmp_path, "one", 1_650_000_000)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "workspace"
    assert all(not n.startswith("/") for n in names)
    for member in members:
        assert member.mtime == NORMALIZED_MTIME
        assert (member.uid, member.gid, member.uname, member.gname) == (1000, 1000, "", "")
    # parents come before children
    seen: set[str] = set()
    for name in names:
        parent = name.rsplit("/", 1)[0] if "/" in name else None
        assert parent is None or parent in seen, name
        seen.add(name)
    by_name = {m.name: m for m in members}
    assert by_name["workspace/link"].issym() and by_name["workspace/link"].linkname == "pkg/a.py"
    hard = [m for m in members if m.islnk()]
    assert len(hard) == 1
    assert by_name["workspace/run.sh"].mode == 0o755


def test_source_date_epoch() -> None:
    assert source_date_epoch({}) == NORMALIZED_MTIME
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1_700_000_000
    with pytest.raises(ImageError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch({"SOURCE_DATE_EPOCH": "yesterday"})


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/../../b"])
def test_paths_cannot_escape(bad: str) -> None:
    with pytest.raises(ImageError, match="escapes"):
        LayerSpec().add_file(bad, b"x")


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}", fullmatch=True),
                       st.binary(max_size=64), min_size=1, max_size=8))
def test_insertion_order_does_not_matter(tmp_path_factory: pytest.TempPathFactory,
                                         files: dict[str, bytes]) -> None:
    tmp = tmp_path_factory.mktemp("order")
    # a path that is also a parent of another path cannot be a file
    names = [n for n in files if not any(o.startswith(n + "/") for o in files)]
    forward, backward = LayerSpec(), LayerSpec()
    for name in names:
        forward.add_file(name, files[name])
    for name in reversed(names):
        backward.add_file(name, files[name])
    assert (write_tar(forward, tmp / "f.tar").diff_id == write_tar(backward, tmp / "b.tar").diff_id)
