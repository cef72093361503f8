"""The CUDA backend against the CPU backend, bit for bit (marker: gpu)."""
import numpy as np
import pytest
import torch

import binllm

from conftest import DIMS, random_codes, ref_pack

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
try:
    from binllm.kernels import cuda as _cuda_backend  # noqa: F401
except ImportError:
    pytest.skip("this build has no CUDA module", allow_module_level=True)

DEV = torch.device("cuda", 0)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", [0, 1, 2, 17, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pack_equals_cpu(n, d, dtype):
    x = torch.randn(n, d).to(dtype)
    if n:
        x[0, 0] = 0.0
        x[-1, -1] = -0.0
    got = binllm.pack_signs(x.to(DEV))
    assert got.device == DEV
    np.testing.assert_array_equal(got.cpu().numpy(), binllm.pack_signs(x).numpy())


def test_pack_non_contiguous_and_nan():
    x = torch.randn(64, 130, device=DEV)
    v = x[:, ::2]
    np.testing.assert_array_equal(binllm.pack_signs(v).cpu().numpy(), ref_pack(v.cpu().numpy()))
    xt = torch.randn(70, 40, device=DEV).t()
    np.testing.assert_array_equal(binllm.pack_signs(xt).cpu().numpy(), ref_pack(xt.cpu().numpy()))
    x[5, 77] = float("nan")
    x[9, 3] = float("nan")
    with pytest.raises(ValueError, match="row 5, column 77"):
        binllm.pack_signs(x)


@pytest.mark.parametrize("d", DIMS)
def test_unpack_and_scores_equal_cpu(d):
    rng = np.random.default_rng(d)
    a, b = random_codes(rng, 37, d), random_codes(rng, 1003, d)
    ga, gb = torch.from_numpy(a).to(DEV), torch.from_numpy(b).to(DEV)
    for dt in ("float32", "float16", "bfloat16", "int8"):
        assert torch.equal(binllm.unpack_signs(ga, d, dt).cpu(), binllm.unpack_signs(torch.from_numpy(a), d, dt))
    assert torch.equal(binllm.unpack_bits(ga, d).cpu(), torch.from_numpy(binllm.unpack_bits(a, d)))
    np.testing.assert_array_equal(binllm.dot_rows(ga, gb[:37], d).cpu().numpy(), binllm.dot_rows(a, b[:37], d))
    np.testing.assert_array_equal(binllm.hamming_rows(ga, gb[:37], d).cpu().numpy(), binllm.hamming_rows(a, b[:37], d))
    for od in ("int32", "int16"):
        np.testing.assert_array_equal(binllm.dot_all(ga, gb, d, out_dtype=od).cpu().numpy(),
                                      binllm.dot_all(a, b, d, out_dtype=od))
        np.testing.assert_array_equal(binllm.hamming_all(ga, gb, d, out_dtype=od).cpu().numpy(),
                                      binllm.hamming_all(a, b, d, out_dtype=od))


@pytest.mark.parametrize("d", [1, 7, 32, 64, 65, 256, 1000])
@pytest.mark.parametrize("n,m,k", [(0, 5, 3), (1, 1, 1), (17, 1000, 10), (3, 3000, 100), (4, 50, 50)])
def test_topk_equals_cpu(n, m, k, d):
    rng = np.random.default_rng(n * 7 + d)
    q, it = random_codes(rng, n, d), random_codes(rng, m, d)
    s, i = binllm.topk(torch.from_numpy(q).to(DEV), torch.from_numpy(it).to(DEV), d, k)
    cs, ci = binllm.topk(q, it, d, k)
    np.testing.assert_array_equal(s.cpu().numpy(), cs)
    np.testing.assert_array_equal(i.cpu().numpy(), ci)


def test_topk_ties_equal_cpu():
    rng = np.random.default_rng(0)
    base = random_codes(rng, 4, 32)
    items = base[rng.integers(0, 4, 5000)]
    q = random_codes(rng, 6, 32)
    for k in (1, 10, 2000):
        s, i = binllm.topk(torch.from_numpy(q).to(DEV), torch.from_numpy(items).to(DEV), 32, k)
        cs, ci = binllm.topk(q, items, 32, k)
        np.testing.assert_array_equal(s.cpu().numpy(), cs)
        np.testing.assert_array_equal(i.cpu().numpy(), ci)


def test_no_silent_device_moves():
    a = torch.zeros(3, 4, dtype=torch.uint8, device=DEV)
    with pytest.raises(ValueError, match="inputs must be on one device"):
        binllm.dot_all(a, torch.zeros(3, 4, dtype=torch.uint8), 32)
