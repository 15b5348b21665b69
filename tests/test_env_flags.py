"""SPARSEKERN_TUNE and SPARSEKERN_DERIVED_LAYOUTS: on/off in any case; a typo warns."""
import pytest

from sparsekern import planner
from sparsekern._env import env_flag


@pytest.mark.parametrize("value, on", [("0", False), ("OFF", False), (" no ", False), ("false", False),
                                       ("1", True), ("On", True), ("yes", True), ("", True)])
def test_on_and_off_spellings(monkeypatch, value, on):
    monkeypatch.setenv(planner.TUNE_ENV, value)
    assert planner.tuning_enabled() is on


def test_unset_gives_the_default(monkeypatch):
    monkeypatch.delenv("SPARSEKERN_SOMETHING", raising=False)
    assert env_flag("SPARSEKERN_SOMETHING") is True
    assert env_flag("SPARSEKERN_SOMETHING", default=False) is False


def test_a_value_neither_on_nor_off_warns(monkeypatch):
    monkeypatch.setenv(planner.TUNE_ENV, "banana")
    with pytest.warns(UserWarning, match="SPARSEKERN_TUNE='banana' is neither on .* nor off .*: taken as on"):
        assert planner.tuning_enabled() is True
