"""The portable-wheel script (tools/build_wheel.py): its checks on known inputs, and one real run.

The fast tests feed the script's checking functions names, file lists and /proc/cpuinfo flags whose
verdict is known, so a check that cannot fail would show here. The `wheel` test builds the sdist and
the manylinux CPU wheel end to end and checks it in a compiler-free venv (minutes; `pytest -m wheel`).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "build_wheel.py"


def _load():
    spec = importlib.util.spec_from_file_location("build_wheel", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_wheel"] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


bw = _load()

GOOD = "binllm-0.1.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"
SUFFIX = ".cpython-311-x86_64-linux-gnu.so"
FILES = ["binllm/__init__.py", f"binllm/_core{SUFFIX}", "binllm/kernels/cuda.py",
         "binllm/templates/movie_codes.txt", "binllm-0.1.0.dist-info/RECORD"]
BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx xsave"
ZEN3 = BASE + " avx2 fma f16c bmi1 bmi2"  # AMD EPYC: AVX2, no AVX-512
SKYLAKE_X = ZEN3 + " avx512f avx512bw avx512vl avx512cd avx512dq"  # AVX-512 but no VPOPCNTDQ
ICELAKE = SKYLAKE_X + " avx512_vpopcntdq avx512_bitalg"


def test_parse_manylinux():
    assert bw.parse_manylinux("manylinux_2_28_x86_64") == (2, 28)
    assert bw.parse_manylinux("manylinux2014_x86_64") == (2, 17)
    assert bw.parse_manylinux("manylinux1_x86_64") == (2, 5)
    assert bw.parse_manylinux("linux_x86_64") is None
    assert bw.parse_manylinux("musllinux_1_2_x86_64") is None


def test_check_tags_accepts_manylinux_up_to_limit():
    assert bw.check_tags(GOOD, "cp311", "manylinux_2_28_x86_64") == []


@pytest.mark.parametrize("name,fragment", [
    ("binllm-0.1.0-cp311-cp311-linux_x86_64.whl", "linux_x86_64"),
    ("binllm-0.1.0-cp311-cp311-manylinux_2_31_x86_64.whl", "manylinux_2_31"),
    ("binllm-0.1.0-cp312-cp312-manylinux_2_28_x86_64.whl", "cp312"),
    ("binllm-0.1.0-py3-none-manylinux_2_28_x86_64.whl", "py3-none"),
])
def test_check_tags_rejects(name, fragment):
    problems = bw.check_tags(name, "cp311", "manylinux_2_28_x86_64")
    assert problems and fragment in " ".join(problems)


def test_check_contents():
    assert bw.check_contents(FILES, SUFFIX) == []
    assert "CUDA" in " ".join(bw.check_contents(FILES + [f"binllm/_cuda_ext{SUFFIX}"], SUFFIX))
    assert "CUDA" in " ".join(bw.check_contents(FILES + ["binllm.libs/libcudart-1234.so.12"], SUFFIX))
    assert bw.check_contents([f for f in FILES if "_core" not in f], SUFFIX)
    assert bw.check_contents(FILES, ".cpython-312-x86_64-linux-gnu.so")  # built for another Python
    assert bw.check_contents([f for f in FILES if "templates" not in f], SUFFIX)


@pytest.mark.parametrize("flags,want", [
    (BASE, "generic"), (ZEN3, "avx2"), (SKYLAKE_X, "avx2"), (ICELAKE, "avx512"),
    (ICELAKE.replace(" fma", ""), "generic"),  # the AVX2 file is compiled with -mfma
])
def test_expected_variant(flags, want):
    text = f"processor\t: 0\nvendor_id\t: x\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n"
    assert bw.expected_variant(bw.cpuinfo_flags(text)) == want


def test_expected_variant_this_machine_matches_flags():
    flags = bw.cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    want = bw.expected_variant(flags)
    assert want in bw.X86_VARIANTS
    assert (want == "avx512") == ("avx512_vpopcntdq" in flags and "avx512bw" in flags and "avx2" in flags)


def test_auditwheel_platform():
    out = ('binllm-0.1.0-cp311-cp311-linux_x86_64.whl is consistent with the\n'
           'following platform tag: "manylinux_2_17_x86_64".\n\nThe wheel references ...')
    assert bw.auditwheel_platform(out) == "manylinux_2_17_x86_64"
    assert bw.auditwheel_platform("binllm.whl is not compliant with any manylinux tag") is None


@pytest.mark.parametrize("kw,fragment", [
    ({"glibc": "228"}, "--glibc"),
    ({"plat": "linux_x86_64"}, "--plat"),
    ({"glibc": "2.31", "plat": "manylinux_2_28_x86_64"}, "older than"),
    ({"check_only": Path("/nonexistent.whl")}, "--check-only"),
])
def test_options_validation(tmp_path, kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        bw.Options(out=tmp_path, work=tmp_path, tools=tmp_path, python=Path(sys.executable), **kw)


@pytest.mark.wheel
def test_build_and_check_wheel(tmp_path):
    """End to end: build, repair, install without compilers, oracle tests, doctor, CPU variant."""
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "dist"), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=3600, check=False)
    report_file = tmp_path / "dist" / "report.json"
    assert report_file.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["failures"] == [], r.stdout[-3000:]
    assert r.returncode == 0 and report["ok"]
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert report["wheel"].startswith("binllm-") and f"-{tag}-{tag}-" in report["wheel"]
    assert bw.parse_manylinux(report["auditwheel_show_tag"]) <= (2, 28)
    want = bw.expected_variant(bw.cpuinfo_flags(Path("/proc/cpuinfo").read_text()))
    assert report["doctor"]["cpu_variant"] == want
    assert report["doctor"]["cpu_variants_compiled"] == ["generic", "avx2", "avx512"]
    assert report["doctor"]["cuda"] is None
    assert " passed" in report["oracle_tests"] and "failed" not in report["oracle_tests"]
    assert (tmp_path / "dist" / report["wheel"]).exists() and (tmp_path / "dist" / report["sdist"]).exists()
