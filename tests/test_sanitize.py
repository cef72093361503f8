"""Builds the C++ core with ASan + UBSan (-DBINLLM_SANITIZE=ON) and runs csrc/tests/sanitize_driver.cpp.

The driver checks every kernel against scalar references on odd sizes, every supported CPU
variant, 1 and 4 threads, with exact-size heap buffers, plus a seeded parser fuzz. Run with
``pytest -m sanitize tests/test_sanitize.py`` (about 1 minute on 2 idle cores).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


@pytest.mark.sanitize
def test_core_is_clean_under_asan_and_ubsan(tmp_path):
    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build the sanitizer driver")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    build = tmp_path / "build"
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *gen, "-DBINLLM_SANITIZE=ON",
                          "-DCMAKE_BUILD_TYPE=Debug"], capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    bld = subprocess.run(["cmake", "--build", str(build), "-j", str(min(4, os.cpu_count() or 1))],
                         capture_output=True, text=True, timeout=900)
    assert bld.returncode == 0, bld.stdout[-5000:] + bld.stderr[-3000:]
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    env.pop("BINLLM_CPU_VARIANT", None)
    env.pop("BINLLM_NUM_THREADS", None)
    run = subprocess.run([str(build / "sanitize_driver")], capture_output=True, text=True, timeout=900, env=env)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert not any(r in out for r in REPORTS), out[-6000:]
    summary = [line for line in out.splitlines() if line.startswith("sanitize_driver:")]
    assert summary and " 0 mismatches" in summary[-1], out[-2000:]
    from binllm import _core

    assert summary[-1].split("variants:")[1].split() == list(_core.supported_variants())
