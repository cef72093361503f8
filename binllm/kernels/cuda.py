"""CUDA implementations of the code operations, for CUDA torch tensors.

Validates like the CPU binding, allocates outputs as torch tensors on the
input's device and calls the kernels in ``binllm._cuda_ext`` with raw device
pointers on the current stream (the extension never links libtorch). Results
equal the CPU backend bit for bit.
"""
from __future__ import annotations

import torch

from binllm import _cuda_ext  # ImportError here means: no CUDA build
from binllm._types import CoreUnpackDtype, OutDtype, ScoreKind

# Enum values come from the extension (core/bits.h), never hard-coded here.
_FLOAT = {torch.float32: _cuda_ext.FLOAT_TYPES["float32"], torch.float16: _cuda_ext.FLOAT_TYPES["float16"],
          torch.bfloat16: _cuda_ext.FLOAT_TYPES["bfloat16"]}
_UNPACK = {name: (_cuda_ext.UNPACK_TYPES[name], dtype) for name, dtype in
           [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16),
            ("int8", torch.int8), ("bits", torch.uint8)]}


def _ctx(t: torch.Tensor) -> tuple[int, int]:
    index = t.device.index
    assert index is not None  # a CUDA tensor always has its device index
    return index, torch.cuda.current_stream(t.device).cuda_stream


def _codes(name: str, c: object, d: int) -> torch.Tensor:
    if d < 1:
        raise ValueError(f"d must be a positive number of dimensions; got {d}")
    if d > 2**31 - 1:
        raise ValueError(f"d must be <= 2147483647 (scores are int32); got {d}")
    nb = (d + 7) // 8
    if not isinstance(c, torch.Tensor) or c.dtype != torch.uint8 or c.dim() != 2:
        got = f"{c.dtype} {tuple(c.shape)}" if isinstance(c, torch.Tensor) else type(c).__name__
        raise TypeError(f"{name} must be a 2-D uint8 tensor of packed codes (n, {nb}); got {got}")
    if c.shape[1] != nb:
        raise ValueError(f"{name} has {c.shape[1]} bytes per row but d={d} needs {nb}")
    c = c.contiguous()
    if d % 8 and c.shape[0] and bool((c[:, -1] & ((1 << (8 - d % 8)) - 1)).any()):
        raise ValueError(f"{name} has bits set past dimension d={d} (tail bits of packed codes must be zero)")
    return c


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in _FLOAT:
        raise TypeError(f"x must be a 2-D float16/bfloat16/float32 CUDA tensor (n, d); got {x.dtype}")
    if x.dim() != 2:
        raise TypeError(f"x must be a 2-D float16/bfloat16/float32 CUDA tensor (n, d); got shape {tuple(x.shape)}")
    n, d = x.shape
    if d < 1:
        raise ValueError(f"x must have at least one column (d >= 1); got {tuple(x.shape)}")
    out = torch.empty((n, (d + 7) // 8), dtype=torch.uint8, device=x.device)
    first = torch.full((1,), -1, dtype=torch.int64, device=x.device)  # all ones = ULLONG_MAX
    dev, stream = _ctx(x)
    _cuda_ext.pack_signs(dev, stream, _FLOAT[x.dtype], x.data_ptr(), n, d, x.stride(0), x.stride(1),
                         out.data_ptr(), first.data_ptr())
    bad = int(first.item())  # one small copy back; it also orders the error after the kernel
    if bad != -1:
        raise ValueError(f"x contains NaN at row {bad // d}, column {bad % d} (sign of NaN is undefined)")
    return out


def unpack(codes: torch.Tensor, d: int, dtype: CoreUnpackDtype) -> torch.Tensor:
    if dtype not in _UNPACK:
        raise ValueError(f"dtype must be one of {', '.join(_UNPACK)} on CUDA; got {dtype!r}")
    c = _codes("codes", codes, d)
    code, tdtype = _UNPACK[dtype]
    out = torch.empty((c.shape[0], d), dtype=tdtype, device=c.device)
    dev, stream = _ctx(c)
    _cuda_ext.unpack(dev, stream, c.data_ptr(), c.shape[0], d, code, out.data_ptr())
    return out


def _kind(kind: ScoreKind) -> int:
    if kind not in _cuda_ext.SCORE_KINDS:
        raise ValueError(f"kind must be 'dot' or 'hamming'; got {kind!r}")
    return _cuda_ext.SCORE_KINDS[kind]


def score_pairs(a: torch.Tensor, b: torch.Tensor, d: int, kind: ScoreKind) -> torch.Tensor:
    ca, cb = _codes("a", a, d), _codes("b", b, d)
    if ca.shape[0] != cb.shape[0]:
        raise ValueError(f"a and b must have the same number of rows for row-aligned scores; got {ca.shape[0]} and "
                         f"{cb.shape[0]}")
    out = torch.empty(ca.shape[0], dtype=torch.int32, device=ca.device)
    dev, stream = _ctx(ca)
    _cuda_ext.score_pairs(dev, stream, _kind(kind), ca.data_ptr(), cb.data_ptr(), ca.shape[0], d, out.data_ptr())
    return out


def score_all(a: torch.Tensor, b: torch.Tensor, d: int, kind: ScoreKind, out_dtype: OutDtype,
              out: torch.Tensor | None = None) -> torch.Tensor:
    ca, cb = _codes("a", a, d), _codes("b", b, d)
    if out_dtype not in ("int32", "int16"):
        raise ValueError(f"out_dtype must be 'int32' or 'int16'; got {out_dtype!r}")
    if out_dtype == "int16" and d > 32767:
        raise ValueError(f"out_dtype='int16' needs d <= 32767; got d={d}")
    tdtype = torch.int32 if out_dtype == "int32" else torch.int16
    shape = (ca.shape[0], cb.shape[0])
    if out is None:
        out = torch.empty(shape, dtype=tdtype, device=ca.device)
    elif out.dtype != tdtype or tuple(out.shape) != shape or not out.is_contiguous() or out.device != ca.device:
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {shape} on {ca.device}")
    dev, stream = _ctx(ca)
    _cuda_ext.score_all(dev, stream, _kind(kind), ca.data_ptr(), shape[0], cb.data_ptr(), shape[1], d,
                        out_dtype == "int16", out.data_ptr())
    return out


def topk(queries: torch.Tensor, items: torch.Tensor, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, it = _codes("queries", queries, d), _codes("items", items, d)
    if d > 65535:
        raise ValueError(f"d must be <= 65535 for topk; got {d}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if k > it.shape[0]:
        raise ValueError(f"k must be <= the number of items ({it.shape[0]}); got k={k}")
    n = q.shape[0]
    scores = torch.empty((n, k), dtype=torch.int32, device=q.device)
    idx = torch.empty((n, k), dtype=torch.int64, device=q.device)
    ws = torch.empty(max(1, _cuda_ext.topk_workspace_bytes(n, d, k)), dtype=torch.uint8, device=q.device)
    dev, stream = _ctx(q)
    _cuda_ext.topk(dev, stream, q.data_ptr(), n, it.data_ptr(), it.shape[0], d, k, scores.data_ptr(), idx.data_ptr(),
                   ws.data_ptr())
    return scores, idx


def build_info() -> dict[str, int | str]:
    return dict(_cuda_ext.build_info())
