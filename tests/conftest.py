"""Shared fixtures: tiny seeded TWGTM models (random weights, no downloads)."""
from __future__ import annotations

import torch
import pytest

from twgtm.config import TWGTMConfig
from twgtm.components import TWGTMComponents

# CI: with TWGTM_REQUIRE_COMFYUI=1 a skipped `comfyui` test fails (see ci_guard.py).
from ci_guard import (pytest_collection_modifyitems, pytest_runtest_logreport,  # noqa: F401
                      pytest_runtest_makereport, pytest_terminal_summary)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def make_tiny_model(seed: int = 0, *, stage: int = 2, randomize_zll: bool = True) -> TWGTMComponents:
    """A seeded tiny model. ``randomize_zll`` gives Extended Attention a non-zero effect (ZLL starts at 0)."""
    torch.manual_seed(seed)
    model = TWGTMComponents.build(TWGTMConfig.tiny(stage=stage), random_prompts=True)
    if randomize_zll and model.stage == 2:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for proc in model.extended_attention_processors().values():
                proc.zll.weight.copy_(torch.randn(proc.zll.weight.shape, generator=g) * 0.2)
    return model.eval()


@pytest.fixture()
def one_thread():
    """One torch thread for the test: tiny models gain nothing from two, and on a busy machine two spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model() -> TWGTMComponents:
    return make_tiny_model(0)


@pytest.fixture()
def fresh_tiny_model() -> TWGTMComponents:
    return make_tiny_model(0)


@pytest.fixture()
def images():
    """A person batch of 2 at a non-model size, a single garment and a person mask."""
    g = torch.Generator().manual_seed(123)
    person = torch.rand(2, 3, 70, 50, generator=g)
    garment = torch.rand(1, 3, 64, 48, generator=g)
    mask = torch.zeros(2, 1, 70, 50)
    mask[:, :, 20:50, 10:40] = 1.0
    return person, garment, mask
