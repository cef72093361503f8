from pathlib import Path

import numpy as np
import pytest

import binllm as _binllm_pkg
from binllm import _core

#: The folder holding the binllm these tests import (site-packages in CI, the checkout in a dev build).
#: Subprocesses get it on PYTHONPATH and run from it, so a source checkout without a built core (as in
#: CI, where `pytest` runs from the repository root) never shadows the installed package.
PKG_PARENT = str(Path(_binllm_pkg.__file__).resolve().parents[1])

DIMS = [1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000]
NS = [0, 1, 2, 17, 1000]


@pytest.fixture(params=list(_core.supported_variants()))
def variant(request):
    """Runs a test once per CPU variant this machine can execute."""
    before = _core.current_variant()
    _core.set_variant(request.param)
    yield request.param
    _core.set_variant(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def ref_pack(x: np.ndarray) -> np.ndarray:
    """numpy oracle: sign bits MSB-first, sign(0) = +1 for both zeros."""
    return np.packbits(np.asarray(x, dtype=np.float64) >= 0, axis=1)


def random_codes(rng, n, d):
    return ref_pack(rng.standard_normal((n, d)))
