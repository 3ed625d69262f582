"""The registry turns names into classes and names the bad key, value and allowed values."""

import pytest

from plasticity_rl.registry import ConfigError, Registry, require, split_spec


def make_registry() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("Scaled")
    class Scaled:
        def __init__(self, factor: float = 2.0):
            self.factor = factor

    return reg


def test_create_by_name_is_case_insensitive_and_passes_kwargs():
    reg = make_registry()
    assert reg.create("scaled", factor=3.0).factor == 3.0
    assert reg.names() == ["scaled"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        make_registry().create("nope")
    assert err.value.key == "widget" and err.value.value == "nope"
    assert "scaled" in str(err.value) and "'nope'" in str(err.value)


def test_unknown_keyword_is_named():
    with pytest.raises(ConfigError, match=r"widget.scaled key: got 'fator'; allowed: factor"):
        make_registry().create("scaled", fator=1.0)


def test_registering_a_name_twice_fails():
    reg = make_registry()
    with pytest.raises(ValueError, match="twice"):
        reg.register("scaled")(object)


def test_require_and_split_spec():
    require(True, "k", 1, "anything")
    with pytest.raises(ConfigError, match=r"lr: got -1; allowed: a number >= 0"):
        require(False, "lr", -1, "a number >= 0")
    assert split_spec("relu", "activation") == ("relu", {})
    assert split_spec({"name": "topk", "k": 3}, "activation") == ("topk", {"k": 3})
    with pytest.raises(ConfigError, match="activation"):
        split_spec({"k": 3}, "activation")
