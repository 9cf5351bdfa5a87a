"""`noops rebase` onto a freshly rebuilt run image: base swapped, app layers byte-identical."""

from __future__ import annotations

import json

import pytest

from helpers import EXAMPLES, needs, wait_http
from noops.build.inspect import freshness
from noops.build.lifecycle import build_image
from noops.build.rebase import rebase_image
from noops.build.stacks import build_stack
from noops.errors import RebaseError
from noops.oci.store import ImageStore
from noops.settings import Settings

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap")]


def test_rebase_swaps_only_the_base(noops_settings: Settings, store: ImageStore, unique: str,
                                    run_image: object) -> None:
    report = build_image(noops_settings, EXAMPLES / "static", tag=f"t-{unique}/rebase")
    before = store.image(report.name)
    old_md = json.loads(before.labels["io.buildpacks.lifecycle.metadata"])
    old_top = old_md["runImage"]["topLayer"]
    app_diffs = before.diff_ids[before.diff_ids.index(old_top) + 1:]
    app_blobs = [d.digest for d in before.layers[before.diff_ids.index(old_top) + 1:]]
    fresh = freshness(store, report.name)
    assert (fresh["stack"], fresh["distro"], fresh["rebase_available"]) == ("static", "debian 12", False)

    # a "patched" run image: rebuilt from Debian with another SOURCE_DATE_EPOCH (the static
    # stack's: the smallest to rebuild; the rebase itself is the same for every stack)
    patched = Settings(environ={"SOURCE_DATE_EPOCH": str(1_700_000_000 + int(unique, 16) % 10**6)},
                       overrides={"home": noops_settings.home})
    new_run = build_stack(patched, store, "static", kinds=("run",))
    new_base = store.image("noops/run-static:stable")
    assert new_base.digest == new_run.run_digest and new_base.diff_ids[-1] != old_top

    assert freshness(store, report.name)["rebase_available"] is True  # the console's "patch me"
    result = rebase_image(noops_settings, store, report.name)
    assert freshness(store, report.name)["rebase_available"] is False
    after = store.image(report.name)
    assert after.digest == result.digest != before.digest
    md = json.loads(after.labels["io.buildpacks.lifecycle.metadata"])
    assert md["runImage"]["topLayer"] == new_base.diff_ids[-1]
    assert md["runImage"]["reference"] == new_base.digest
    assert after.diff_ids[: len(new_base.diff_ids)] == new_base.diff_ids
    assert after.diff_ids[len(new_base.diff_ids):] == app_diffs
    assert [d.digest for d in after.layers[len(new_base.diff_ids):]] == app_blobs
    assert after.labels["io.buildpacks.base.released"] == new_base.labels["io.buildpacks.base.released"]

    running = run_image(report.name)  # type: ignore[operator]
    assert "noops example: static" in wait_http(running.url + "/")[1]


def test_rebase_refuses_a_foreign_run_image(noops_settings: Settings, store: ImageStore,
                                            unique: str) -> None:
    report = build_image(noops_settings, EXAMPLES / "static", tag=f"t-{unique}/static")
    with pytest.raises(RebaseError, match="neither that nor a mirror"):
        rebase_image(noops_settings, store, report.name, run_image="noops/run-python:stable")
