"""ruff (the [tool.ruff] settings of pyproject.toml) passes over the package, tests, benchmarks and tools.

Skipped (with the reason) where ruff is not installed."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    return [exe] if Path(exe).is_file() else None


def test_ruff_is_clean():
    cmd = _ruff()
    if cmd is None:
        pytest.skip("ruff is not installed (pip install ruff) - lint not run")
    r = subprocess.run(cmd + ["check", "--no-fix", "binllm", "tests", "bench", "tools"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
