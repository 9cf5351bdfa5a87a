"""Apps: create, look up, list; names validated; duplicates refused."""

from __future__ import annotations

import datetime as dt

import pytest

from noops.errors import UsageError

pytestmark = pytest.mark.state


def test_create_and_list_apps(state):
    before = dt.datetime.now(dt.UTC)
    created = state.create_app("shop")
    state.create_app("api-2")

    assert created.name == "shop"
    assert before - dt.timedelta(seconds=1) <= created.created_at <= dt.datetime.now(dt.UTC)
    assert state.app("shop") == created
    assert [a.name for a in state.apps()] == ["api-2", "shop"]


def test_apps_are_shared_between_store_objects(backend):
    first, second = backend.open(), backend.open()
    first.create_app("shop")
    assert [a.name for a in second.apps()] == ["shop"]


def test_duplicate_app_is_refused_and_says_so(state):
    state.create_app("shop")
    with pytest.raises(UsageError, match="app shop exists"):
        state.create_app("shop")
    assert len(state.apps()) == 1


@pytest.mark.parametrize("name", ["", "Shop", "1shop", "-shop", "shop_api", "shop.api", "a" * 64,
                                  "shop api", "shöp"])
def test_invalid_app_name_is_refused_with_the_rule(state, name):
    with pytest.raises(UsageError, match=r"invalid app name .*lower-case letters, digits and '-'"):
        state.create_app(name)
    assert state.apps() == []


def test_longest_valid_name(state):
    name = "a" + "b-" * 31
    assert len(name) == 63
    assert state.create_app(name).name == name


def test_unknown_app_says_how_to_create_it(state):
    with pytest.raises(UsageError, match=r"no app named nope: create it with `noops apps create nope`"):
        state.app("nope")
    for call in (lambda: state.releases("nope"), lambda: state.config("nope"),
                 lambda: state.set_config("nope", {"A": "1"}), lambda: state.secrets("nope"),
                 lambda: state.instances("nope")):
        with pytest.raises(UsageError, match="no app named nope"):
            call()
