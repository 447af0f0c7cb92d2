from __future__ import annotations

import pytest

from edgeft.errors import ConfigError
from edgeft.registry import Registry


def test_get_by_name_and_alias():
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1, aliases=("a",))
    assert reg.get("alpha") == 1
    assert reg.get("a") == 1
    assert reg.names() == ["alpha"]
    assert "a" in reg and "beta" not in reg


def test_unknown_name_suggests_close_names():
    reg: Registry[int] = Registry("method")
    reg.add("aft", 1)
    reg.add("kdep", 2)
    with pytest.raises(ConfigError, match=r"unknown method 'atf' \(did you mean 'aft'\?\)"):
        reg.get("atf")


def test_double_registration_is_refused():
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)
    with pytest.raises(ValueError):
        reg.add("alpha", 2)
