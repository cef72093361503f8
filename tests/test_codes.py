"""Kernels against plain numpy oracles, on every CPU variant this machine runs."""
import numpy as np
import pytest
import torch

import binllm
from binllm import _core

from conftest import DIMS, NS, random_codes, ref_pack


def ref_hamming_all(a, b):
    x = np.bitwise_xor(a[:, None, :], b[None, :, :])
    return np.bitwise_count(x).sum(axis=2, dtype=np.int64)


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", NS)
def test_pack_matches_packbits(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[rng.random((n, d)) < 0.05] = 0.0
    x[rng.random((n, d)) < 0.05] = -0.0
    got = binllm.pack_signs(x)
    assert got.dtype == np.uint8 and got.shape == (n, (d + 7) // 8)
    np.testing.assert_array_equal(got, ref_pack(x))


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 9, 32, 33, 64, 100, 256, 1000])
def test_pack_dtypes(rng, dtype, d):
    x = (rng.standard_normal((37, d)) * 3).astype(dtype)
    x[:, ::5] = 0
    x[:, 1::7] = -np.zeros(1, dtype)
    np.testing.assert_array_equal(binllm.pack_signs(x), ref_pack(x))


@pytest.mark.usefixtures("variant")
def test_pack_float64_tiny_negative_stays_negative():
    x = np.array([[-1e-300, 1e-300, -0.0, 0.0, -np.inf, np.inf, -5e-324, 5e-324]])
    np.testing.assert_array_equal(binllm.pack_signs(x), [[0b01110101]])
    # in float32 the tiny values round to signed zeros, which are +1
    np.testing.assert_array_equal(binllm.pack_signs(x.astype(np.float32)), [[0b11110111]])


@pytest.mark.usefixtures("variant")
def test_pack_float16_subnormal_and_zero():
    x = np.array([[-6e-8, 6e-8, -0.0, 0.0, -65504, 65504, -np.inf, np.inf, 1, -1]], dtype=np.float16)
    np.testing.assert_array_equal(binllm.pack_signs(x), ref_pack(x.astype(np.float64)))


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", [5, 32, 77, 256])
def test_pack_torch_bfloat16_and_back(d):
    t = torch.randn(50, d).to(torch.bfloat16)
    t[:, 0] = 0.0
    t[:, 1] = -0.0
    got = binllm.pack_signs(t)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), ref_pack(t.float().numpy()))
    back = binllm.unpack_signs(got, d, dtype="bfloat16")
    assert back.dtype == torch.bfloat16
    assert torch.equal(back, torch.where(t >= 0, 1.0, -1.0).to(torch.bfloat16))


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", [7, 64, 129])
def test_pack_non_contiguous(rng, d):
    base = rng.standard_normal((40, 2 * d)).astype(np.float32)
    for x in (base[:, ::2], base[::3, :d], base[:, :d].T.copy().T, base[::-1, d:]):
        np.testing.assert_array_equal(binllm.pack_signs(x), ref_pack(x))
    xt = torch.from_numpy(base).t()[:d]  # column-major view
    np.testing.assert_array_equal(binllm.pack_signs(xt).numpy(), ref_pack(xt.numpy()))


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("where", [(0, 0), (3, 31), (5, 40), (6, 64)])
def test_pack_nan_names_first_position(rng, dtype, where):
    x = rng.standard_normal((8, 65)).astype(dtype)
    x[where] = np.nan
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match=rf"x contains NaN at row {where[0]}, column {where[1]}\b"):
        binllm.pack_signs(x)


def test_pack_nan_many_threads(rng):
    x = rng.standard_normal((200_000, 32)).astype(np.float32)
    x[150_001, 3] = np.nan
    x[199_999, 0] = np.nan
    with pytest.raises(ValueError, match="row 150001, column 3"):
        binllm.pack_signs(x)


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", [0, 1, 17])
def test_unpack(rng, n, d):
    c = random_codes(rng, n, d)
    bits = np.unpackbits(c, axis=1, count=d)
    np.testing.assert_array_equal(binllm.unpack_bits(c, d), bits)
    for dt in ("float32", "float64", "float16", "int8"):
        got = binllm.unpack_signs(c, d, dtype=dt)
        assert got.dtype == np.dtype(dt) and got.shape == (n, d)
        np.testing.assert_array_equal(got, 2 * bits.astype(dt) - 1)


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", DIMS)
def test_pack_unpack_roundtrip(rng, d):
    c = random_codes(rng, 33, d)
    np.testing.assert_array_equal(binllm.pack_signs(binllm.unpack_signs(c, d)), c)


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", NS)
def test_pair_scores(rng, n, d):
    a, b = random_codes(rng, n, d), random_codes(rng, n, d)
    ham = np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int64)
    np.testing.assert_array_equal(binllm.hamming_rows(a, b, d), ham)
    np.testing.assert_array_equal(binllm.dot_rows(a, b, d), d - 2 * ham)
    ua, ub = binllm.unpack_signs(a, d, "float64"), binllm.unpack_signs(b, d, "float64")
    np.testing.assert_array_equal(binllm.dot_rows(a, b, d), (ua * ub).sum(axis=1))


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n,m", [(0, 5), (5, 0), (1, 1), (2, 17), (17, 1000), (3, 1031)])
def test_all_scores(rng, n, m, d):
    a, b = random_codes(rng, n, d), random_codes(rng, m, d)
    ham = ref_hamming_all(a, b)
    np.testing.assert_array_equal(binllm.hamming_all(a, b, d), ham)
    np.testing.assert_array_equal(binllm.dot_all(a, b, d), d - 2 * ham)
    s16 = binllm.dot_all(a, b, d, out_dtype="int16")
    assert s16.dtype == np.int16
    np.testing.assert_array_equal(s16, d - 2 * ham)
    np.testing.assert_array_equal(binllm.hamming_all(a, b, d, out_dtype="int16"), ham)


@pytest.mark.usefixtures("variant")
def test_all_scores_large_tiles(rng):
    # several row and item tiles, and enough work for threads
    for d in (32, 64, 200):
        a, b = random_codes(rng, 130, d), random_codes(rng, 9000, d)
        np.testing.assert_array_equal(binllm.dot_all(a, b, d), d - 2 * ref_hamming_all(a, b))


@pytest.mark.usefixtures("variant")
def test_scores_non_contiguous_rows(rng):
    d = 64
    a, b = random_codes(rng, 40, d), random_codes(rng, 60, d)
    a2, b2 = a[::2], b[1::3]
    np.testing.assert_array_equal(binllm.dot_all(a2, b2, d), d - 2 * ref_hamming_all(a2, b2))
    np.testing.assert_array_equal(binllm.dot_rows(a2, b2[:20], d),
                                  d - 2 * np.bitwise_count(a2 ^ b2[:20]).sum(1, dtype=np.int64))
    a3 = np.asfortranarray(a)
    np.testing.assert_array_equal(binllm.dot_all(np.ascontiguousarray(a3), b, d), binllm.dot_all(a, b, d))


@pytest.mark.usefixtures("variant")
def test_scores_exact_extremes():
    d = 65
    ones = ref_pack(np.ones((1, d)))
    zeros = ref_pack(-np.ones((1, d)))
    assert binllm.dot_rows(ones, ones, d)[0] == d
    assert binllm.dot_rows(ones, zeros, d)[0] == -d
    assert binllm.hamming_all(ones, zeros, d)[0, 0] == d


def ref_topk(q, items, d, k):
    s = d - 2 * ref_hamming_all(q, items)
    # best first, ties to the lower index: stable sort on -score
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n,m,k", [(0, 5, 3), (1, 1, 1), (2, 17, 5), (17, 1000, 10), (3, 3000, 100), (4, 50, 50)])
def test_topk(rng, n, m, k, d):
    q, items = random_codes(rng, n, d), random_codes(rng, m, d)
    s, i = binllm.topk(q, items, d, k)
    rs, ri = ref_topk(q, items, d, k)
    assert s.dtype == np.int32 and i.dtype == np.int64 and s.shape == (n, k)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(i, ri)


@pytest.mark.usefixtures("variant")
def test_topk_heavy_ties(rng):
    # learned codes repeat a lot: only 4 distinct items among 5000
    d = 32
    base = random_codes(rng, 4, d)
    items = base[rng.integers(0, 4, 5000)]
    q = random_codes(rng, 6, d)
    for k in (1, 10, 2000, 5000):
        s, i = binllm.topk(q, items, d, k)
        rs, ri = ref_topk(q, items, d, k)
        np.testing.assert_array_equal(s, rs)
        np.testing.assert_array_equal(i, ri)


def topk_block(d):
    """Items per top-k block in csrc/core/ops.cpp (kTopkBlockBytes / nbytes(d), clamped to 64..8192)."""
    return min(8192, max(64, 32768 // ((d + 7) // 8)))


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", [32, 64, 120, 128, 200, 250, 256, 1000])
def test_topk_tiles(rng, d):
    # top-k filters item blocks for groups of up to 64 queries, the first block in growing
    # steps, and on AVX2 a nibble-split copy of each block (16/32-byte codes, >= 4 queries):
    # m past two blocks and not a multiple of 8, n past one group (a second group of 6),
    # k past a block, packed and strided items
    m = 2 * topk_block(d) + 13
    q = random_codes(rng, 70, d)
    items = random_codes(rng, m, d)
    for k in (1, 10, topk_block(d) + 5):
        s, i = binllm.topk(q, items, d, k)
        rs, ri = ref_topk(q, items, d, k)
        np.testing.assert_array_equal(s, rs)
        np.testing.assert_array_equal(i, ri)
    wide = random_codes(rng, 2 * m, d)[1::2]  # row stride 2 * nbytes(d)
    s, i = binllm.topk(q[::3], wide, d, 7)
    rs, ri = ref_topk(q[::3], wide, d, 7)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(i, ri)


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", [32, 128, 256])
def test_topk_ties_across_tiles(rng, d):
    # 5 distinct codes over m > 2 blocks: every score ties with items in every block, so the
    # order is decided by index alone, across blocks and query groups; k = m sorts them all
    m = 2 * topk_block(d) + 29
    items = random_codes(rng, 5, d)[rng.integers(0, 5, m)]
    q = random_codes(rng, 9, d)
    for k in (1, 3, topk_block(d) + 1, m):
        s, i = binllm.topk(q, items, d, k)
        rs, ri = ref_topk(q, items, d, k)
        np.testing.assert_array_equal(s, rs)
        np.testing.assert_array_equal(i, ri)


@pytest.mark.usefixtures("variant")
@pytest.mark.parametrize("d", [64, 128, 192, 256, 512, 1000, 1984, 2047, 2048])
def test_scores_every_bit_differs(d):
    # the largest distances: the byte-count sums of the popcount paths (SWAR words summed
    # per byte in the generic variant, nibble counts summed per byte in AVX2) must not overflow
    ones, zeros = ref_pack(np.ones((9, d))), ref_pack(-np.ones((17, d)))
    assert (binllm.hamming_all(ones, zeros, d) == d).all()
    assert (binllm.hamming_rows(ones, zeros[:9], d) == d).all()
    s, i = binllm.topk(ones, zeros, d, 3)
    assert (s == -d).all() and (i == [0, 1, 2]).all()
    s, i = binllm.topk(ones, np.concatenate([zeros, ones[:1]]), d, 2)
    assert (s == [d, -d]).all() and (i == [17, 0]).all()


def test_torch_in_torch_out():
    d = 40
    x = torch.randn(9, d)
    c = binllm.pack_signs(x)
    assert isinstance(c, torch.Tensor)
    assert isinstance(binllm.dot_all(c, c, d), torch.Tensor)
    s, i = binllm.topk(c, c, d, 3)
    assert isinstance(s, torch.Tensor) and isinstance(i, torch.Tensor)
    assert torch.equal(s[:, 0], torch.full((9,), d, dtype=torch.int32))
    u = binllm.unpack_signs(c, d)
    assert torch.equal(u, torch.where(x >= 0, 1.0, -1.0))
    # the +-1 inner product equals a float matmul of the unpacked codes
    assert torch.equal(binllm.dot_all(c, c, d).float(), u @ u.T)


def test_variants_listed():
    comp = _core.compiled_variants()
    assert comp[0] == "generic"
    assert set(_core.supported_variants()) <= set(comp)
    assert _core.current_variant() in _core.supported_variants()
    with pytest.raises(ValueError, match="unknown CPU variant"):
        binllm.set_cpu_variant("sse9")


def test_threads_setting(rng):
    before = binllm.num_threads()
    try:
        binllm.set_num_threads(1)
        assert binllm.num_threads() == 1
        a = random_codes(rng, 300, 64)
        one = binllm.dot_all(a, a, 64)
        binllm.set_num_threads(4)
        np.testing.assert_array_equal(binllm.dot_all(a, a, 64), one)
    finally:
        binllm.set_num_threads(0)
    assert binllm.num_threads() == before


def test_all_scores_into_out_buffer(rng):
    d = 40
    a, b = random_codes(rng, 7, d), random_codes(rng, 9, d)
    for dt in ("int32", "int16"):
        buf = np.full((7, 9), 99, dtype=dt)
        got = binllm.dot_all(a, b, d, out_dtype=dt, out=buf)
        assert got is buf
        np.testing.assert_array_equal(buf, d - 2 * ref_hamming_all(a, b))
    t = torch.zeros(7, 9, dtype=torch.int32)
    assert binllm.hamming_all(torch.from_numpy(a), torch.from_numpy(b), d, out=t) is t
    np.testing.assert_array_equal(t.numpy(), ref_hamming_all(a, b))
