"""Packed binary codes: sign packing, unpacking, +-1 inner products, Hamming
distances and top-k retrieval.

A code of ``d`` dimensions is ``ceil(d/8)`` bytes, MSB-first (dimension 0 is
bit 7 of byte 0, as ``numpy.packbits``), tail bits zero; sign(x) is +1 iff
x >= 0. The +-1 inner product of two codes is ``d - 2 * hamming``.

Every function takes numpy arrays or torch tensors and returns the same kind;
CPU tensors share memory with numpy (no copies), CUDA tensors run on the CUDA
backend. Tensors given to pack_signs, unpack_signs, dot_all, hamming_all (without
``out=``) and topk go through the ``torch.library`` ops of
:mod:`binllm.kernels.torch_ops` (the same kernels and results), so the plain call
``binllm.pack_signs(t)`` traces under ``torch.compile(fullgraph=True)``; the other
functions run eagerly (:mod:`binllm.kernels.eager`) and break a graph.

``d`` is always explicit because the packed width cannot tell 30
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

import typing

import numpy as np

from binllm._types import ArrayT, OutDtype, UnpackDtype
from binllm.kernels import arrays, eager

if typing.TYPE_CHECKING:
    from types import ModuleType


def _ops(*xs: object) -> ModuleType | None:
    """binllm.kernels.torch_ops when every input is a CPU or CUDA tensor (imported on the first one:
    torch is loaded by then), else None: numpy goes to the eager kernels, and tensors on other
    devices (meta, mps, ...) get their ValueError naming the argument there."""
    if not all(arrays.is_torch(x) and x.device.type in arrays.BACKENDS for x in xs):
        return None
    import torch

    if not all(isinstance(x, torch.Tensor) for x in xs):  # duck-typed stand-ins take the eager path
        return None
    from binllm.kernels import torch_ops

    return torch_ops


def pack_signs(x: ArrayT) -> ArrayT:
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
    if ops := _ops(x):
        return ops.pack_signs(x)
    return eager.pack_signs(x)


def unpack_signs(codes: ArrayT, d: int, dtype: UnpackDtype = "float32") -> ArrayT:
    """Unpacks codes to +-1 values.

    Args:
        codes: uint8 (n, ceil(d/8)).
        d: number of dimensions.
        dtype: 'float32', 'float64' (CPU only), 'float16', 'bfloat16' (torch inputs only) or 'int8'.
    Returns:
        (n, d) array of +1/-1 in `dtype`.
    """
    if dtype in eager.UNPACK_DTYPES and (ops := _ops(codes)):
        return ops.unpack_signs(codes, d, dtype)
    return eager.unpack_signs(codes, d, dtype)


def unpack_bits(codes: ArrayT, d: int) -> ArrayT:
    """Unpacks codes to 0/1 bits: uint8 (n, d), as ``numpy.unpackbits(..., count=d)``."""
    return eager.unpack_bits(codes, d)


def dot_rows(a: ArrayT, b: ArrayT, d: int) -> ArrayT:
    """+-1 inner products of aligned rows: int32 (n,), out[r] = <a_r, b_r> in [-d, d]."""
    return eager.dot_rows(a, b, d)


def hamming_rows(a: ArrayT, b: ArrayT, d: int) -> ArrayT:
    """Hamming distances of aligned rows: int32 (n,) in [0, d]."""
    return eager.hamming_rows(a, b, d)


def dot_all(a: ArrayT, b: ArrayT, d: int, out_dtype: OutDtype = "int32", out: ArrayT | None = None) -> ArrayT:
    """+-1 inner products of all pairs: (n, m) int32, or int16 (half the bytes; d <= 32767).

    `out`, a C-contiguous (n, m) array of `out_dtype` that shares no memory with
    `a` or `b`, is filled and returned instead of a new array (repeated calls then
    skip page faults of fresh memory)."""
    if out is None and (ops := _ops(a, b)):
        return ops.dot_all(a, b, d, out_dtype)
    return eager.dot_all(a, b, d, out_dtype, out)


def hamming_all(a: ArrayT, b: ArrayT, d: int, out_dtype: OutDtype = "int32", out: ArrayT | None = None) -> ArrayT:
    """Hamming distances of all pairs: (n, m) int32 or int16 (d <= 32767); `out` as in :func:`dot_all`."""
    if out is None and (ops := _ops(a, b)):
        return ops.hamming_all(a, b, d, out_dtype)
    return eager.hamming_all(a, b, d, out_dtype, out)


def topk(queries: ArrayT, items: ArrayT, d: int, k: int) -> tuple[ArrayT, ArrayT]:
    """The k items with the largest +-1 inner product for every query.

    Args:
        queries: uint8 (n, ceil(d/8)); items: uint8 (m, ceil(d/8)); 1 <= k <= m; d <= 65535.
    Returns:
        (scores int32 (n, k), indices int64 (n, k)), best first; equal scores
        are ordered by the lower item index.
    """
    if ops := _ops(queries, items):
        return ops.topk(queries, items, d, k)
    return eager.topk(queries, items, d, k)


def balance(codes: ArrayT, d: int) -> np.ndarray:
    """Share of ones per bit: float64 (d,). 0.5 everywhere means balanced bits."""
    return eager.balance(codes, d)
