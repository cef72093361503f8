"""Regression tests of the kernel-API failures F1-F8 and F17-F20 of the reliability review.

Each test reproduces one failure at a size that stays fast and allocates little: huge
inputs are broadcast (stride-0) views, which cost no memory.
"""
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import binllm
from binllm import _core

from conftest import PKG_PARENT, random_codes, ref_pack

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict[str, str] | None = None, prefix: str = "") -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter that imports this checkout (optionally behind a shell prefix)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BINLLM_")}
    full_env.update(PYTHONPATH=PKG_PARENT, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **(env or {}))
    script = textwrap.dedent(code)
    cmd = f'{prefix} exec "{sys.executable}" -c "$BINLLM_TEST_CODE"'
    full_env["BINLLM_TEST_CODE"] = script
    return subprocess.run(["bash", "-c", cmd], env=full_env, capture_output=True, text=True, timeout=120,
                          cwd=PKG_PARENT)


# ---------------------------------------------------------------- F1: size products overflow


@pytest.mark.parametrize("out", ["buffer", "list", "array"])
def test_f1_to_bits_rejects_overflowing_sizes(out):
    a = np.broadcast_to(np.zeros((1, 4), np.uint8), (2**59, 4))  # n * d wraps to 0 in int64
    with pytest.raises((ValueError, MemoryError), match="too large|array is too big|Unable to allocate"):
        binllm.to_bits(a, 32, out=out)


@pytest.mark.parametrize("out", ["buffer", "list", "array"])
def test_f1_to_dotted_rejects_overflowing_sizes(out):
    a = np.broadcast_to(np.zeros((1, 4), np.uint8), (2**60, 4))  # n * width(15) wraps
    with pytest.raises((ValueError, MemoryError), match="too large|array is too big|Unable to allocate"):
        binllm.to_dotted(a, 32, out=out)


def test_f1_unpack_rejects_overflowing_sizes():
    a = np.broadcast_to(np.zeros((1, 4), np.uint8), (2**59, 4))
    with pytest.raises((ValueError, MemoryError)):
        binllm.unpack_bits(a, 32)


# ---------------------------------------------------------------- F2: list items freed during parsing


@pytest.mark.parametrize("kind", ["bytes", "str"])
def test_f2_parser_keeps_list_items_alive(kind):
    """The parser must not read items another thread replaced (and freed) while the GIL was released."""
    r = run_python(
        f"""
        import threading, numpy as np, binllm
        binllm.set_num_threads(1)
        codes = np.packbits(np.random.default_rng(0).integers(0, 2, (100_000, 32), dtype=np.uint8), axis=1)
        texts = binllm.to_dotted(codes, 32)
        for _ in range(3):
            lst = [t.encode() for t in texts] if "{kind}" == "bytes" else [t[:-1] + t[-1:] for t in texts]
            res = {{}}
            th = threading.Thread(target=lambda: res.update(v=binllm.from_dotted(lst, 32)))
            th.start()
            for i in range(len(lst)):
                lst[i] = b"255.255.255.255" if "{kind}" == "bytes" else "255.255.255.255"
            th.join()
            got = res["v"]
            # every row is either the original code or the replacement, never garbage
            ok = (got == codes).all(axis=1) | (got == 255).all(axis=1)
            assert ok.all(), np.flatnonzero(~ok)[:5]
        print("OK")
        """
    )
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stderr[-2000:])


# ---------------------------------------------------------------- F3: thread creation failure


def test_f3_thread_creation_failure_runs_inline():
    """With a 1 GiB stack limit and a 3 GiB address-space limit, most worker threads cannot be created."""
    r = run_python(
        """
        import numpy as np, binllm
        x = np.random.default_rng(0).standard_normal((200_000, 40)).astype(np.float32)
        got = binllm.pack_signs(x)
        assert (got == np.packbits(x >= 0, axis=1)).all()
        print("OK", binllm.num_threads())
        """,
        env={"BINLLM_NUM_THREADS": "8"},
        prefix="ulimit -s 1048576; ulimit -v 3500000;",
    )
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_f3_threads_are_capped():
    hw = os.cpu_count() or 1
    before = binllm.num_threads()
    try:
        binllm.set_num_threads(100_000)
        assert 1 <= binllm.num_threads() <= 4 * hw
    finally:
        binllm.set_num_threads(0)
    assert binllm.num_threads() == before


# ---------------------------------------------------------------- F4: byte order


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_f4_pack_rejects_non_native_byte_order(dtype):
    x = np.array([[1, -1, 2.5, -0.5, 0, -3, 7, -7]], dtype=dtype)
    with pytest.raises(ValueError, match="x must have native byte order"):
        binllm.pack_signs(x)
    np.testing.assert_array_equal(binllm.pack_signs(x.astype(x.dtype.newbyteorder("="))), [[170]])


def test_f4_out_rejects_non_native_byte_order():
    c = np.zeros((2, 4), np.uint8)
    with pytest.raises((ValueError, TypeError), match="out"):
        binllm.dot_all(c, c, 32, out=np.zeros((2, 2), ">i4"))


# ---------------------------------------------------------------- F5: out= aliasing


def test_f5_out_overlapping_a_is_rejected():
    out = np.random.default_rng(0).integers(-(2**31), 2**31, (4, 2)).astype(np.int32)
    a = out.view(np.uint8)  # 4 codes of 8 bytes that live in the output buffer
    b = np.packbits(np.random.default_rng(1).integers(0, 2, (2, 64), dtype=np.uint8), axis=1)
    with pytest.raises(ValueError, match="out overlaps a"):
        binllm.dot_all(a, b, 64, out=out)


def test_f5_out_overlapping_b_is_rejected():
    out = np.zeros((2, 4), np.int32)
    b = out.view(np.uint8).reshape(4, 8)[:, :4]  # strided rows inside out
    a = np.zeros((2, 4), np.uint8)
    with pytest.raises(ValueError, match="out overlaps b"):
        binllm.hamming_all(a, b, 32, out=out)


def test_f5_neighbouring_buffers_are_fine():
    buf = np.zeros(64, np.uint8)
    a = buf[:16].reshape(2, 8)
    out = buf[16:].view(np.int32).reshape(2, 6)[:, :2].copy()  # a copy: separate memory
    b = np.zeros((2, 8), np.uint8)
    res = np.zeros((4, 4), np.int32)
    sub = res[:2, :2]  # not contiguous, rejected for that reason, not for overlap
    assert binllm.dot_all(a, b, 64, out=np.zeros((2, 2), np.int32)).tolist() == [[64, 64], [64, 64]]
    with pytest.raises(ValueError, match="C-contiguous"):
        binllm.dot_all(a, b, 64, out=sub)
    assert out.shape == (2, 2)


# ---------------------------------------------------------------- F6 / F20: d range


@pytest.mark.parametrize("d", [2**31, 2**31 + 5, 2**62, 2**63 - 1])
def test_f6_d_beyond_int32_is_rejected(d):
    c = np.zeros((1, 4), np.uint8)
    with pytest.raises(ValueError, match=r"d must be <= 2147483647"):
        binllm.hamming_rows(c, c, d)
    with pytest.raises(ValueError, match=r"d must be <= 2147483647"):
        binllm.unpack_bits(c, d)
    with pytest.raises(ValueError, match=r"d must be <= 2147483647"):
        binllm.from_dotted([], d)


def test_f6_largest_d_is_accepted_by_the_check():
    d = 2**31 - 1
    c = np.zeros((0, (d + 7) // 8), np.uint8)[:, :0]  # wrong width: must fail on the width, not on d
    with pytest.raises(ValueError, match="bytes per row but d=2147483647 needs 268435456"):
        binllm.dot_rows(c, c, d)


# ---------------------------------------------------------------- F7 is checked by tests/test_sanitize.py


# ---------------------------------------------------------------- F8: torch devices and views


def test_f8_meta_tensors_are_rejected_clearly():
    with pytest.raises(ValueError, match="x is on device 'meta'"):
        binllm.pack_signs(torch.empty(3, 9, device="meta"))
    with pytest.raises(ValueError, match="codes is on device 'meta'"):
        binllm.unpack_bits(torch.empty(3, 4, dtype=torch.uint8, device="meta"), 32)
    with pytest.raises(ValueError, match="codes is on device 'meta'"):
        binllm.to_dotted(torch.empty(2, 4, dtype=torch.uint8, device="meta"), 32)


def test_f8_unsupported_torch_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="x has torch dtype"):
        binllm.pack_signs(torch.empty(3, 9, dtype=torch.float4_e2m1fn_x2))


def test_f8_neg_view_is_resolved():
    t = torch.tensor([[1.0, -2.0, 0.5, -0.0]])._neg_view()
    np.testing.assert_array_equal(binllm.pack_signs(t).numpy(), ref_pack(-np.array([[1.0, -2.0, 0.5, -0.0]])))


# ---------------------------------------------------------------- F17: environment variables


def test_f17_bad_num_threads_warns_and_falls_back():
    for value in ["0", "-1", "abc", "99999999999", "1e3", "4x", " 4", ""]:
        r = run_python(
            "import warnings, binllm\n"
            "print(binllm.num_threads(), binllm.build_info()['problems'])\n",
            env={"BINLLM_NUM_THREADS": value},
        )
        assert r.returncode == 0, (value, r.stderr)
        threads, problems = r.stdout.split(" ", 1)
        hw = os.cpu_count() or 1
        assert int(threads) == (4 * hw if value == "99999999999" else hw), (value, r.stdout)
        if value:
            assert "BINLLM_NUM_THREADS" in r.stderr and "BINLLM_NUM_THREADS" in problems, (value, r.stderr)
        else:
            assert problems.strip() == "[]"


def test_f17_good_num_threads_is_used():
    r = run_python("import binllm; print(binllm.num_threads(), binllm.build_info()['problems'])",
                   env={"BINLLM_NUM_THREADS": "3"})
    assert r.stdout.split() == ["3", "[]"] and "BINLLM" not in r.stderr, (r.stdout, r.stderr)


@pytest.mark.parametrize("value", ["garbage", "AVX2", " avx2", "avx1024"])
def test_f17_bad_cpu_variant_warns_falls_back_and_doctor_reports(value):
    r = run_python(
        "import numpy as np, binllm\n"
        "info = binllm.build_info()\n"
        "binllm.pack_signs(np.ones((2, 9), np.float32))\n"
        "print(info['cpu_variant'], info['problems'])\n",
        env={"BINLLM_CPU_VARIANT": value},
    )
    assert r.returncode == 0, r.stderr
    assert "BINLLM_CPU_VARIANT" in r.stderr
    variant, problems = r.stdout.split(" ", 1)
    assert variant == _core.supported_variants()[-1]
    assert "BINLLM_CPU_VARIANT" in problems and repr(value) in problems


def test_f17_good_cpu_variant_is_used():
    r = run_python("import binllm; print(binllm.build_info()['cpu_variant'])", env={"BINLLM_CPU_VARIANT": "generic"})
    assert r.stdout.strip() == "generic" and "BINLLM" not in r.stderr, r.stderr


def test_f17_bad_backend_warns_and_is_ignored():
    r = run_python(
        "import numpy as np, binllm\n"
        "print(binllm.dot_rows(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), 8).tolist(),"
        " binllm.build_info()['problems'])\n",
        env={"BINLLM_BACKEND": "garbage"},
    )
    assert r.returncode == 0, r.stderr
    assert "BINLLM_BACKEND" in r.stderr and "[8]" in r.stdout and "BINLLM_BACKEND" in r.stdout


# ---------------------------------------------------------------- F18: parser error reporting


def test_f18_lone_surrogate_names_the_row():
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        binllm.from_dotted(["1.2.3.4", "1.2.3.4\ud800"], 32)
    with pytest.raises(ValueError, match=r"texts\[0\]"):
        binllm.from_bits(["\udcff" * 8], 8)


def test_f18_first_bad_row_wins_over_a_later_surrogate():
    with pytest.raises(ValueError, match=r"texts\[0\].*leading zero"):
        binllm.from_dotted(["01.2.3.4", "\ud800"], 32)


def test_f18_unicode_array_names_the_first_bad_row():
    with pytest.raises(ValueError, match=r"texts\[0\].*leading zero"):
        binllm.from_dotted(np.array(["01.2.3.4", "١.2.3.4"]), 32)
    with pytest.raises(ValueError, match=r"texts\[1\] has non-ASCII"):
        binllm.from_dotted(np.array(["1.2.3.4", "١.2.3.4", "01.2.3.4"]), 32)
    np.testing.assert_array_equal(binllm.from_dotted(np.array(["1.2.3.4", "255.0.0.16"])[::-1], 32),
                                  [[255, 0, 0, 16], [1, 2, 3, 4]])


# ---------------------------------------------------------------- F19: tail scan


def test_f19_k_is_checked_before_scanning_rows():
    items = np.broadcast_to(np.zeros((1, 4), np.uint8), (2**40, 4))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="k must be <= the number of items"):
        binllm.topk(np.zeros((0, 4), np.uint8), items, 31, 2**40 + 1)
    assert time.perf_counter() - t0 < 1.0


def test_f19_broadcast_rows_are_scanned_once():
    a = np.broadcast_to(np.zeros((1, 4), np.uint8), (2**40, 4))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="a and b must have the same number of rows"):
        binllm.dot_rows(a, np.zeros((1, 4), np.uint8), 31)
    assert time.perf_counter() - t0 < 1.0
    bad = np.broadcast_to(np.array([[0, 0, 0, 1]], np.uint8), (2**40, 4))
    with pytest.raises(ValueError, match="a row 0 has bits set past dimension d=31"):
        binllm.dot_rows(bad, bad, 31)


def test_f19_tail_scan_still_finds_a_bad_row():
    c = np.zeros((5, 4), np.uint8)
    c[3, 3] = 1
    with pytest.raises(ValueError, match="items row 3 has bits set"):
        binllm.topk(c[:1], c, 31, 2)


# ---------------------------------------------------------------- scores stay exact near the limits


def test_scores_at_large_d_match_oracle(rng):
    d = 70_001
    a, b = random_codes(rng, 3, d), random_codes(rng, 2, d)
    ham = np.bitwise_count(a[:, None, :] ^ b[None]).sum(axis=2, dtype=np.int64)
    np.testing.assert_array_equal(binllm.hamming_all(a, b, d), ham)
    np.testing.assert_array_equal(binllm.dot_all(a, b, d), d - 2 * ham)


def test_concurrent_parse_with_threads_is_exact():
    codes = random_codes(np.random.default_rng(5), 40_000, 64)
    texts = binllm.to_dotted(codes, 64)
    res = []
    ths = [threading.Thread(target=lambda: res.append(binllm.from_dotted(texts, 64))) for _ in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert len(res) == 3 and all((r == codes).all() for r in res)


# ---------------------------------------------------------------- CPU detection (CPUID + XGETBV)


def _cpuinfo_flags() -> set[str]:
    from binllm import _cpuinfo

    if not _cpuinfo.flags():
        pytest.skip("no flags line in a readable /proc/cpuinfo")
    return set(_cpuinfo.flags())


def test_supported_variants_match_cpuinfo():
    """The variants detected from CPUID/XGETBV are exactly those the kernel's flags allow, best chosen."""
    if "avx512" not in _core.compiled_variants():
        pytest.skip("not an x86-64 build")
    flags = _cpuinfo_flags()
    avx2 = {"avx2", "fma", "f16c", "popcnt", "bmi2"} <= flags
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq"} <= flags
    want = ["generic"] + ["avx2"] * avx2 + ["avx512"] * avx512
    assert list(_core.supported_variants()) == want
    r = run_python("import binllm; print(binllm.build_info()['cpu_variant'])")
    assert r.stdout.strip() == want[-1], r.stderr


def test_cpuinfo_parse_reads_the_first_processor_and_tolerates_missing_lines():
    from binllm import _cpuinfo

    text = ("processor\t: 0\nmodel name\t: Some CPU @ 2GHz\nflags\t\t: fpu avx2 avx512f\n\n"
            "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    assert _cpuinfo.parse(text) == (frozenset({"fpu", "avx2", "avx512f"}), "Some CPU @ 2GHz")
    assert _cpuinfo.parse("processor : 0\n") == (frozenset(), "")
    with pytest.raises(TypeError, match="text must be a str"):
        _cpuinfo.parse(b"flags : avx2")  # type: ignore[arg-type]
    assert _cpuinfo.flags() == _cpuinfo.parse(Path(_cpuinfo.PATH).read_text())[0] or not Path(_cpuinfo.PATH).exists()
