"""Packed binary codes: sign packing, unpacking, +-1 inner products, Hamming
distances and top-k retrieval.

A code of ``d`` dimensions is ``ceil(d/8)`` bytes, MSB-first (dimension 0 is
bit 7 of byte 0, as ``numpy.packbits``), tail bits zero; sign(x) is +1 iff
x >= 0. The +-1 inner product of two codes is ``d - 2 * hamming``.

Every function takes numpy arrays or torch tensors and returns the same kind;
CPU tensors share memory with numpy (no copies), CUDA tensors run on the CUDA
backend. ``d`` is always explicit because the packed width cannot tell 30
dimensions from 32.

Limits, each checked with a ValueError that names the argument:

* ``1 <= d <= 2**31 - 1`` (scores are int32); ``topk`` needs ``d <= 65535``.
* Float inputs (``pack_signs``) may have any strides but native byte order.
* Code matrices may have any row stride (including broadcast and negative
  strides), but the bytes of one row must be contiguous: pass
  ``numpy.ascontiguousarray(codes)`` for Fortran-order or column-reversed views.
* ``out=`` buffers must be C-contiguous, writable, native byte order, and must
  not share memory with the inputs.
* Output sizes that overflow int64 (huge broadcast views) are rejected before
  anything is allocated.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend, _core

_UNPACK_DTYPES = ("float32", "float64", "float16", "bfloat16", "int8")


def _cuda(name: str, *args: Any, **kw: Any) -> Any:
    return getattr(_backend.cuda_module(), name)(*args, **kw)


def pack_signs(x: Any) -> Any:
    """Packs the signs of a float matrix into codes.

    Args:
        x: float16/bfloat16/float32/float64 of shape (n, d), any strides, native byte order
            (float64 on the CPU backend only).
    Returns:
        uint8 (n, ceil(d/8)); bit = 1 iff x >= 0 (so -0.0 and +0.0 give 1).
    Raises:
        ValueError: x holds NaN (the message names the row and column).
        TypeError: wrong dtype or number of dimensions.
    """
    if _backend.backend_for(x=x) == "cuda":
        return _cuda("pack_signs", x)
    arr, bf16 = _backend.host_view("x", x)
    return _backend.like(_core.pack_signs(arr, bfloat16=bf16), x)


def unpack_signs(codes: Any, d: int, dtype: str = "float32") -> Any:
    """Unpacks codes to +-1 values.

    Args:
        codes: uint8 (n, ceil(d/8)).
        d: number of dimensions.
        dtype: 'float32', 'float64', 'float16', 'bfloat16' (torch inputs only) or 'int8'.
    Returns:
        (n, d) array of +1/-1 in `dtype`.
    """
    if dtype not in _UNPACK_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_UNPACK_DTYPES)}; got {dtype!r}")
    if _backend.backend_for(codes=codes) == "cuda":
        return _cuda("unpack", codes, d, dtype)
    arr, _ = _backend.host_view("codes", codes)
    if dtype == "bfloat16":
        if not _backend.is_torch(codes):
            raise ValueError("dtype='bfloat16' needs torch tensor input (numpy has no bfloat16)")
        import torch

        return _backend.like(_core.unpack(arr, d, "bfloat16"), codes, torch.bfloat16)
    return _backend.like(_core.unpack(arr, d, dtype), codes)


def unpack_bits(codes: Any, d: int) -> Any:
    """Unpacks codes to 0/1 bits: uint8 (n, d), as ``numpy.unpackbits(..., count=d)``."""
    if _backend.backend_for(codes=codes) == "cuda":
        return _cuda("unpack", codes, d, "bits")
    arr, _ = _backend.host_view("codes", codes)
    return _backend.like(_core.unpack(arr, d, "bits"), codes)


def _pairs(kind: str, a: Any, b: Any, d: int) -> Any:
    if _backend.backend_for(a=a, b=b) == "cuda":
        return _cuda("score_pairs", a, b, d, kind)
    aa, _ = _backend.host_view("a", a)
    bb, _ = _backend.host_view("b", b)
    return _backend.like(_core.score_pairs(aa, bb, d, kind), a)


def _all(kind: str, a: Any, b: Any, d: int, out_dtype: str, out: Any) -> Any:
    if _backend.backend_for(a=a, b=b) == "cuda":
        return _cuda("score_all", a, b, d, kind, out_dtype, out)
    aa, _ = _backend.host_view("a", a)
    bb, _ = _backend.host_view("b", b)
    o = None if out is None else _backend.host_view("out", out)[0]
    res = _core.score_all(aa, bb, d, kind, out_dtype, o)
    return out if out is not None else _backend.like(res, a)


def dot_rows(a: Any, b: Any, d: int) -> Any:
    """+-1 inner products of aligned rows: int32 (n,), out[r] = <a_r, b_r> in [-d, d]."""
    return _pairs("dot", a, b, d)


def hamming_rows(a: Any, b: Any, d: int) -> Any:
    """Hamming distances of aligned rows: int32 (n,) in [0, d]."""
    return _pairs("hamming", a, b, d)


def dot_all(a: Any, b: Any, d: int, out_dtype: str = "int32", out: Any = None) -> Any:
    """+-1 inner products of all pairs: (n, m) int32, or int16 (half the bytes; d <= 32767).

    `out`, a C-contiguous (n, m) array of `out_dtype` that shares no memory with
    `a` or `b`, is filled and returned instead of a new array (repeated calls then
    skip page faults of fresh memory)."""
    return _all("dot", a, b, d, out_dtype, out)


def hamming_all(a: Any, b: Any, d: int, out_dtype: str = "int32", out: Any = None) -> Any:
    """Hamming distances of all pairs: (n, m) int32 or int16 (d <= 32767); `out` as in :func:`dot_all`."""
    return _all("hamming", a, b, d, out_dtype, out)


def topk(queries: Any, items: Any, d: int, k: int) -> tuple[Any, Any]:
    """The k items with the largest +-1 inner product for every query.

    Args:
        queries: uint8 (n, ceil(d/8)); items: uint8 (m, ceil(d/8)); 1 <= k <= m; d <= 65535.
    Returns:
        (scores int32 (n, k), indices int64 (n, k)), best first; equal scores
        are ordered by the lower item index.
    """
    if _backend.backend_for(queries=queries, items=items) == "cuda":
        return _cuda("topk", queries, items, d, k)
    q, _ = _backend.host_view("queries", queries)
    it, _ = _backend.host_view("items", items)
    s, i = _core.topk(q, it, d, k)
    return _backend.like(s, queries), _backend.like(i, queries)


def balance(codes: Any, d: int) -> np.ndarray:
    """Share of ones per bit: float64 (d,). 0.5 everywhere means balanced bits."""
    bits = unpack_bits(codes, d)
    if _backend.is_torch(bits):
        bits = bits.cpu().numpy()
    if bits.shape[0] == 0:
        return np.full(d, np.nan)
    return bits.mean(axis=0, dtype=np.float64)
