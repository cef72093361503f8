"""The code operations run at once on the inputs' backend (``dispatch.impl``): numpy arrays
and CPU tensors on the C++ core, CUDA tensors on the CUDA kernels, no ``torch.library`` op.

The bodies behind :mod:`binllm.kernels.codes` (whose docstrings are the reference) and behind
the custom ops in :mod:`binllm.kernels.torch_ops`, which must not call back into ``codes``:
``codes`` hands tensors to those ops, so the ops' kernels end here.
"""
from __future__ import annotations

import typing

import numpy as np

from binllm._types import ArrayT, OutDtype, UnpackDtype
from binllm.kernels import arrays, dispatch

UNPACK_DTYPES = typing.get_args(UnpackDtype)  # the Literal is the one list


def pack_signs(x: ArrayT) -> ArrayT:
    """Packs the signs of a float matrix into codes."""
    return dispatch.impl(x=x).pack_signs(x)


def unpack_signs(codes: ArrayT, d: int, dtype: UnpackDtype = "float32") -> ArrayT:
    """Unpacks codes to +-1 values."""
    if dtype not in UNPACK_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(UNPACK_DTYPES)}; got {dtype!r}")
    return dispatch.impl(codes=codes).unpack(codes, arrays.whole("d", d), dtype)


def unpack_bits(codes: ArrayT, d: int) -> ArrayT:
    """Unpacks codes to 0/1 bits: uint8 (n, d), as ``numpy.unpackbits(..., count=d)``."""
    return dispatch.impl(codes=codes).unpack(codes, arrays.whole("d", d), "bits")


def dot_rows(a: ArrayT, b: ArrayT, d: int) -> ArrayT:
    """+-1 inner products of aligned rows: int32 (n,), out[r] = <a_r, b_r> in [-d, d]."""
    return dispatch.impl(a=a, b=b).score_pairs(a, b, arrays.whole("d", d), "dot")


def hamming_rows(a: ArrayT, b: ArrayT, d: int) -> ArrayT:
    """Hamming distances of aligned rows: int32 (n,) in [0, d]."""
    return dispatch.impl(a=a, b=b).score_pairs(a, b, arrays.whole("d", d), "hamming")


def dot_all(a: ArrayT, b: ArrayT, d: int, out_dtype: OutDtype = "int32", out: ArrayT | None = None) -> ArrayT:
    """+-1 inner products of all pairs: (n, m) int32, or int16 (half the bytes; d <= 32767)."""
    return dispatch.impl(a=a, b=b).score_all(a, b, arrays.whole("d", d), "dot", out_dtype, out)


def hamming_all(a: ArrayT, b: ArrayT, d: int, out_dtype: OutDtype = "int32", out: ArrayT | None = None) -> ArrayT:
    """Hamming distances of all pairs: (n, m) int32 or int16 (d <= 32767); `out` as in :func:`dot_all`."""
    return dispatch.impl(a=a, b=b).score_all(a, b, arrays.whole("d", d), "hamming", out_dtype, out)


def topk(queries: ArrayT, items: ArrayT, d: int, k: int) -> tuple[ArrayT, ArrayT]:
    """The k items with the largest +-1 inner product for every query."""
    return dispatch.impl(queries=queries, items=items).topk(queries, items, arrays.whole("d", d),
                                                            arrays.whole("k", k))


def balance(codes: ArrayT, d: int) -> np.ndarray:
    """Share of ones per bit: float64 (d,). 0.5 everywhere means balanced bits."""
    bits = unpack_bits(codes, d)
    host: np.ndarray = bits.cpu().numpy() if arrays.is_torch(bits) else np.asarray(bits)
    if host.shape[0] == 0:
        return np.full(d, np.nan)
    return host.mean(axis=0, dtype=np.float64)
