"""mypy over binllm/ reports no error, with the [tool.mypy] settings of pyproject.toml.

Behind the ``typing`` marker (``pytest -m typing``; .ci/run and the README's test line run it
before the default suite): the cache lives in the repository's .mypy_cache (mypy puts a
.gitignore in it), so a warm run takes a few seconds, but a cold one - every CI run, on a fresh
clone - takes about 50 s on 2 cores, which would put the default suite over its 2 minutes.
Skipped (with the reason) where mypy is not installed."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.typing


def test_mypy_binllm_is_clean():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install mypy) - type check not run")
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                        "--cache-dir", str(ROOT / ".mypy_cache"), "binllm"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Success: no issues found" in r.stdout
