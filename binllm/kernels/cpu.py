"""CPU implementations of the code operations, for numpy arrays and CPU torch tensors.

The mirror of ``binllm.kernels.cuda``: the same functions with the same signatures, chosen by
``binllm.kernels.dispatch.impl``. Inputs are viewed as numpy without copies, the C++ core
(``binllm._core``) validates and computes, and results come back as the input's kind (a CPU
tensor that shares memory with the numpy result for torch inputs).
"""
from __future__ import annotations

import numpy as np

from binllm import _core
from binllm._types import ArrayT, CoreUnpackDtype, OutDtype, ScoreKind
from binllm.kernels import arrays


def pack_signs(x: ArrayT) -> ArrayT:
    arr, bf16 = arrays.host_view("x", x)
    return arrays.like(_core.pack_signs(arr, bfloat16=bf16), x)


def unpack(codes: ArrayT, d: int, dtype: CoreUnpackDtype) -> ArrayT:
    arr, _ = arrays.host_view("codes", codes)
    if dtype == "bfloat16":
        if not arrays.is_torch(codes):
            raise ValueError("dtype='bfloat16' needs torch tensor input (numpy has no bfloat16)")
        import torch

        return arrays.like(_core.unpack(arr, d, "bfloat16"), codes, torch.bfloat16)
    return arrays.like(_core.unpack(arr, d, dtype), codes)


def score_pairs(a: ArrayT, b: ArrayT, d: int, kind: ScoreKind) -> ArrayT:
    aa, _ = arrays.host_view("a", a)
    bb, _ = arrays.host_view("b", b)
    return arrays.like(_core.score_pairs(aa, bb, d, kind), a)


def score_all(a: ArrayT, b: ArrayT, d: int, kind: ScoreKind, out_dtype: OutDtype, out: ArrayT | None = None) -> ArrayT:
    aa, _ = arrays.host_view("a", a)
    bb, _ = arrays.host_view("b", b)
    o: np.ndarray | None = None if out is None else arrays.host_view("out", out)[0]
    res = _core.score_all(aa, bb, d, kind, out_dtype, o)
    return out if out is not None else arrays.like(res, a)


def topk(queries: ArrayT, items: ArrayT, d: int, k: int) -> tuple[ArrayT, ArrayT]:
    q, _ = arrays.host_view("queries", queries)
    it, _ = arrays.host_view("items", items)
    s, i = _core.topk(q, it, d, k)
    return arrays.like(s, queries), arrays.like(i, queries)
