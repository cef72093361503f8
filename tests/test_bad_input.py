"""One table: every public code function x bad input -> error type, and the
message names the argument."""
import sys

import numpy as np
import pytest
import torch

import binllm
from binllm.kernels import dispatch as _backend

C32 = np.zeros((3, 4), np.uint8)
X = np.zeros((3, 32), np.float32)

CASES = [
    # (call, exception, words the message must contain)
    (lambda: binllm.pack_signs(np.zeros((3, 4), np.int32)), TypeError, ["x must be", "int32"]),
    (lambda: binllm.pack_signs(np.zeros(5, np.float32)), TypeError, ["x must be", "(5,)"]),
    (lambda: binllm.pack_signs(np.zeros((2, 2, 2), np.float32)), TypeError, ["x must be"]),
    (lambda: binllm.pack_signs(np.zeros((3, 0), np.float32)), ValueError, ["x must have at least one column"]),
    (lambda: binllm.pack_signs([[1.0, 2.0]]), TypeError, ["x must be a numpy array or a torch tensor"]),
    (lambda: binllm.pack_signs(np.array([[1.0, np.nan]])), ValueError, ["x contains NaN at row 0, column 1"]),
    (lambda: binllm.pack_signs(torch.tensor([[1.0, float("nan")]], dtype=torch.bfloat16)), ValueError,
     ["x contains NaN"]),
    (lambda: binllm.unpack_signs(C32, 33), ValueError, ["codes has 4 bytes per row but d=33 needs 5"]),
    (lambda: binllm.unpack_signs(C32, 32, dtype="int64"), ValueError, ["dtype must be one of"]),
    (lambda: binllm.unpack_signs(C32, 32, dtype="bfloat16"), ValueError, ["dtype='bfloat16' needs torch"]),
    (lambda: binllm.unpack_bits(C32.astype(np.int8), 32), TypeError, ["codes must be a 2-D uint8"]),
    (lambda: binllm.unpack_bits(C32, 0), ValueError, ["d must be a positive"]),
    (lambda: binllm.unpack_bits(np.full((2, 1), 0xFF, np.uint8), 7), ValueError,
     ["codes row 0 has bits set past dimension d=7"]),
    (lambda: binllm.dot_rows(C32, C32[:2], 32), ValueError, ["a and b must have the same number of rows"]),
    (lambda: binllm.dot_rows(C32, X, 32), TypeError, ["b must be a 2-D uint8"]),
    (lambda: binllm.hamming_rows(C32.ravel(), C32, 32), TypeError, ["a must be a 2-D uint8", "(12,)"]),
    (lambda: binllm.dot_all(C32, np.zeros((3, 5), np.uint8), 32), ValueError, ["b has 5 bytes per row"]),
    (lambda: binllm.dot_all(C32, C32, 64), ValueError, ["a has 4 bytes per row but d=64"]),
    (lambda: binllm.dot_all(C32, C32, 32, out_dtype="float32"), ValueError, ["out_dtype must be 'int32' or 'int16'"]),
    (lambda: binllm.hamming_all(np.zeros((1, 4097), np.uint8), np.zeros((1, 4097), np.uint8), 32776,
                                out_dtype="int16"), ValueError, ["out_dtype='int16' needs d <= 32767"]),
    (lambda: binllm.dot_all(C32, C32, 32, out=np.zeros((3, 3), np.int16)), TypeError, ["out must be int32"]),
    (lambda: binllm.dot_all(C32, C32, 32, out=np.zeros((3, 4), np.int32)), ValueError, ["out must have shape (3, 3)"]),
    (lambda: binllm.dot_all(C32, C32, 32, out=np.zeros((3, 6), np.int32)[:, ::2]), ValueError,
     ["out must be C-contiguous"]),
    (lambda: binllm.topk(C32, C32, 32, 4), ValueError, ["k must be <= the number of items (3)"]),
    (lambda: binllm.topk(C32, C32, 32, 0), ValueError, ["k must be >= 1"]),
    (lambda: binllm.topk(C32, C32[:, :3], 32, 1), ValueError, ["items has 3 bytes per row"]),
    (lambda: binllm.topk(C32.astype(np.float32), C32, 32, 1), TypeError, ["queries must be a 2-D uint8"]),
    (lambda: binllm.to_bits(C32, 40), ValueError, ["codes has 4 bytes per row but d=40"]),
    (lambda: binllm.to_dotted(C32, 32, out="str"), ValueError, ["out must be 'list', 'array' or 'buffer'"]),
    (lambda: binllm.to_dotted("1.2.3.4", 32), TypeError, ["codes must be a numpy array or a torch tensor"]),
    (lambda: binllm.from_bits("0101", 4), TypeError, ["texts must be a list of str"]),
    (lambda: binllm.from_bits(["0101", 5], 4), TypeError, ["texts[1] must be str or bytes"]),
    (lambda: binllm.from_bits(["0101"], 0), ValueError, ["d must be a positive"]),
    (lambda: binllm.from_dotted(np.zeros((2, 2), "S3"), 8), TypeError, ["texts must be"]),
    (lambda: binllm.from_dotted(np.array(["1.2", "1.é"]), 16), ValueError, ["texts[1] has non-ASCII"]),
    (lambda: binllm.from_dotted(["1.2.3"], 32), ValueError, ["texts[0]", "too few numbers", "'1.2.3'"]),
    (lambda: binllm.format_codes(C32, 32, style="hex"), ValueError, ["style must be 'bits' or 'dotted'"]),
    (lambda: binllm.require_backend("tpu"), ValueError, ["name must be None, 'cpu' or 'cuda'"]),
    (lambda: binllm.set_cpu_variant("avx1024"), ValueError, ["name: unknown CPU variant", "known: generic"]),
    # hardening (reliability review F1-F8, F18, F20)
    (lambda: binllm.pack_signs(np.zeros((2, 8), ">f4")), ValueError, ["x must have native byte order", ">f4"]),
    (lambda: binllm.dot_all(C32, C32, 32, out=np.zeros((3, 3), ">i4")), ValueError,
     ["out must have native byte order"]),
    (lambda: (lambda o: binllm.dot_all(o.view(np.uint8)[:, :4], C32, 32, out=o))(np.zeros((4, 3), np.int32)),
     ValueError, ["out overlaps a"]),
    (lambda: binllm.hamming_rows(C32, C32, 2**31), ValueError, ["d must be <= 2147483647", "2147483648"]),
    (lambda: binllm.from_bits([], 2**62), ValueError, ["d must be <= 2147483647"]),
    (lambda: binllm.to_bits(np.broadcast_to(C32[:1], (2**59, 4)), 32, out="list"), ValueError, ["too large"]),
    (lambda: binllm.pack_signs(torch.empty(2, 8, device="meta")), ValueError, ["x is on device 'meta'"]),
    (lambda: binllm.topk(torch.empty(2, 4, dtype=torch.uint8, device="meta"), C32, 32, 1), ValueError,
     ["queries is on device 'meta'"]),
    (lambda: binllm.from_dotted(["1.2.3.4", "\ud800"], 32), ValueError, ["texts[1] is not valid text", "surrogate"]),
    (lambda: binllm.from_dotted(np.array(["01.2", "1.é"]), 16), ValueError, ["texts[0]", "leading zero"]),
]


@pytest.mark.parametrize("call,exc,words", CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


class FakeCudaTensor:  # the dispatcher only looks at .device; no GPU needed to test the messages
    __module__ = "torch.fake"
    device = torch.device("cuda", 0)


@pytest.fixture
def no_cuda_build(monkeypatch):
    """This process as a CPU-only build sees it: importing the CUDA modules fails (a None entry in
    sys.modules makes `import` raise ImportError), whether or not this build has them."""
    monkeypatch.delattr(binllm, "_cuda_backend", raising=False)
    monkeypatch.delattr(binllm, "_cuda_ext", raising=False)
    monkeypatch.setitem(sys.modules, "binllm.kernels.cuda", None)
    monkeypatch.setitem(sys.modules, "binllm._cuda_ext", None)


@pytest.mark.usefixtures("no_cuda_build")
def test_cuda_tensor_without_cuda_build_is_clear():
    with pytest.raises(RuntimeError, match="no CUDA backend") as info:
        binllm.pack_signs(FakeCudaTensor())
    assert "-DBINLLM_CUDA=ON" in str(info.value) and ".cpu()" in str(info.value)
    with pytest.raises(ValueError, match="inputs must be on one device; got a on cpu, b on cuda:0"):
        binllm.dot_all(C32, FakeCudaTensor(), 32)
    # diagnostics report the missing module as "no CUDA", not as a problem
    info_ = binllm.build_info()
    assert info_["cuda"] is None and not any("CUDA" in p for p in info_["problems"])


def test_require_backend_requires_and_never_moves(monkeypatch):
    monkeypatch.setattr(_backend, "_REQUIRED", None)  # restored after the test, whatever happens
    binllm.require_backend("cpu")
    np.testing.assert_array_equal(binllm.dot_rows(C32, C32, 32), np.full(3, 32, np.int32))
    with pytest.raises(ValueError, match="backend 'cpu' required .* inputs are on cuda:0"):
        binllm.pack_signs(FakeCudaTensor())
    binllm.require_backend("cuda")
    with pytest.raises(ValueError, match="backend 'cuda' required .* inputs are on cpu"):
        binllm.dot_rows(C32, C32, 32)
    binllm.require_backend(None)
    assert binllm.dot_rows(C32, C32, 32).tolist() == [32, 32, 32]
    with pytest.warns(DeprecationWarning, match="require_backend"):
        binllm.set_backend("cpu")
    assert _backend._REQUIRED == "cpu"


def test_cuda_module_builds_and_loads_without_a_gpu():
    """Where nvcc was present at build time the CUDA module must import even on a machine without a GPU."""
    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec("binllm._cuda_ext") is None:
        if shutil.which("nvcc") and os.environ.get("CI"):
            pytest.fail("CI has nvcc on PATH but the CUDA module was not built")
        # a CPU-only build (no nvcc at build time) says so plainly; the no-CUDA error path itself is
        # tested on every build by test_cuda_tensor_without_cuda_build_is_clear
        info = binllm.build_info()
        assert info["cuda"] is None and not any("CUDA" in p for p in info["problems"])
        return
    info = binllm.build_info()["cuda"]
    assert info["cuda_runtime"] > 0 and "90" in info["architectures"].split(",")
