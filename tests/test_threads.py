"""DIYSC_THREADS: a fixed intra-op thread count, applied by every stage script's shared options."""

from __future__ import annotations

import pytest
import torch

from diysc import runtime
from diysc.stage_options import params_options


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread_whatever_the_machine(monkeypatch):
    monkeypatch.delenv("DIYSC_THREADS", raising=False)
    assert runtime.threads() == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("DIYSC_THREADS", value)
    with pytest.raises(ValueError, match="DIYSC_THREADS"):
        runtime.threads()


def test_stage_options_apply_the_setting(monkeypatch, restore_threads):
    monkeypatch.setenv("DIYSC_THREADS", "3")
    params_options(lambda params_path, overrides: None)
    assert torch.get_num_threads() == 3
    monkeypatch.delenv("DIYSC_THREADS")
    params_options(lambda params_path, overrides: None)
    assert torch.get_num_threads() == 1
