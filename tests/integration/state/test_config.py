"""Config vars and secrets share one version counter; every version is a snapshot a release pins."""

from __future__ import annotations

import pytest
from state_helpers import new_release

from noops.errors import UsageError

pytestmark = pytest.mark.state


def test_config_versions_set_and_unset(state):
    state.create_app("shop")
    assert state.config_version("shop") == 0
    assert state.config("shop") == {}

    assert state.set_config("shop", {"LOG_LEVEL": "info", "WORKERS": "2"}) == 1
    assert state.set_config("shop", {"WORKERS": "4"}, unset=["LOG_LEVEL"]) == 2
    assert state.set_config("shop", unset=["WORKERS"]) == 3

    assert state.config("shop") == {}
    assert state.config("shop", 0) == {}
    assert state.config("shop", 1) == {"LOG_LEVEL": "info", "WORKERS": "2"}
    assert state.config("shop", 2) == {"WORKERS": "4"}
    assert state.config_version("shop") == 3


def test_a_change_that_changes_nothing_keeps_the_version(state):
    state.create_app("shop")
    assert state.set_config("shop", {"A": "1"}) == 1
    assert state.set_config("shop", {"A": "1"}) == 1
    assert state.set_config("shop", unset=["MISSING"]) == 1
    assert state.set_config("shop") == 1
    assert state.set_secrets("shop", {"TOKEN": "t"}) == 2
    assert state.set_secrets("shop", {"TOKEN": "t"}) == 2
    assert state.set_secrets("shop", unset=["MISSING"]) == 2


def test_apps_have_their_own_config(state):
    state.create_app("shop")
    state.create_app("blog")
    state.set_config("shop", {"A": "shop"})
    assert state.config("blog") == {}
    assert state.set_config("blog", {"A": "blog"}) == 1
    assert state.config("shop") == {"A": "shop"}


def test_values_round_trip_exactly(state):
    state.create_app("shop")
    values = {"EMPTY": "", "SPACES": "  a b  ", "UNICODE": "héllo ✓ 雪", "MULTI": "l1\nl2\r\n",
              "QUOTES": "'\"`$HOME;--", "LONG": "x" * 100_000}
    state.set_config("shop", values)
    assert state.config("shop") == values


@pytest.mark.parametrize(("values", "unset", "message"), [
    ({"1ABC": "x"}, [], "invalid config key '1ABC'"),
    ({"A-B": "x"}, [], "invalid config key 'A-B'"),
    ({"": "x"}, [], "invalid config key ''"),
    ({}, ["NO SPACE"], "invalid config key 'NO SPACE'"),
    ({"A": "x\x00y"}, [], "the value of A contains a NUL"),
    ({"A": 1}, [], "the value of A must be a string"),
    ({"A": "1"}, ["A"], "A both set and unset"),
])
def test_invalid_changes_are_refused_and_change_nothing(state, values, unset, message):
    state.create_app("shop")
    with pytest.raises(UsageError, match=message):
        state.set_config("shop", values, unset=unset)
    with pytest.raises(UsageError, match=message):
        state.set_secrets("shop", values, unset=unset)
    assert state.config_version("shop") == 0


def test_unknown_config_version_is_refused(state):
    state.create_app("shop")
    state.set_config("shop", {"A": "1"})
    with pytest.raises(UsageError, match=r"app shop has no config version 2 \(the current one is 1\)"):
        state.config("shop", 2)
    with pytest.raises(UsageError, match="no config version 5"):
        state.secrets("shop", 5)


def test_secrets_bump_the_config_version_and_a_release_pins_both(state):
    state.create_app("shop")
    state.set_config("shop", {"LOG_LEVEL": "info"})                      # v1
    v2 = state.set_secrets("shop", {"DB_PASSWORD": "pw-1", "API_KEY": "k"})
    assert v2 == 2
    pinned = new_release(state, "shop", config_version=v2)

    state.set_secrets("shop", {"DB_PASSWORD": "pw-2"}, unset=["API_KEY"])  # v3
    state.set_config("shop", {"LOG_LEVEL": "debug"})                     # v4

    assert state.config("shop", pinned.config_version) == {"LOG_LEVEL": "info"}
    assert state.secrets("shop", pinned.config_version) == {"API_KEY": "k", "DB_PASSWORD": "pw-1"}
    assert state.secret_keys("shop", pinned.config_version) == ["API_KEY", "DB_PASSWORD"]
    assert state.config("shop") == {"LOG_LEVEL": "debug"}
    assert state.secrets("shop") == {"DB_PASSWORD": "pw-2"}
    assert state.secret_keys("shop") == ["DB_PASSWORD"]
    assert state.config_version("shop") == 4
    assert state.secrets("shop", 1) == {}


def test_secret_values_round_trip(state):
    state.create_app("shop")
    values = {"EMPTY": "", "UNICODE": "pässwörd ✓", "LONG": "s" * 50_000, "PEM": "-----BEGIN\nx\n"}
    state.set_secrets("shop", values)
    assert state.secrets("shop") == values
    assert state.config("shop") == {}


def test_a_key_is_a_config_var_or_a_secret_not_both(state):
    state.create_app("shop")
    state.set_config("shop", {"PLAIN": "1"})
    state.set_secrets("shop", {"HIDDEN": "2"})
    with pytest.raises(UsageError, match="PLAIN is a config var of app shop, not a secret"):
        state.set_secrets("shop", {"PLAIN": "x"})
    with pytest.raises(UsageError, match="HIDDEN is a secret of app shop, not a config var"):
        state.set_config("shop", {"HIDDEN": "x"})
    assert state.config_version("shop") == 2
    # moving a key across is an unset and a set
    state.set_config("shop", unset=["PLAIN"])
    assert state.set_secrets("shop", {"PLAIN": "now secret"}) == 4


def test_concurrent_config_changes_all_land(backend):
    import threading

    replicas = [backend.open(), backend.open()]
    replicas[0].create_app("shop")
    start = threading.Barrier(8)
    versions: list[int] = []

    def change(i: int) -> None:
        start.wait()
        store = replicas[i % 2]
        if i % 2:
            versions.append(store.set_secrets("shop", {f"S{i}": str(i)}))
        else:
            versions.append(store.set_config("shop", {f"C{i}": str(i)}))

    threads = [threading.Thread(target=change, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(versions) == list(range(1, 9))
    assert replicas[1].config("shop") == {f"C{i}": str(i) for i in range(0, 8, 2)}
    assert replicas[1].secrets("shop") == {f"S{i}": str(i) for i in range(1, 8, 2)}
