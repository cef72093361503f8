"""binllm's code kernels and the straight-through sign as ``torch.library`` custom ops.

``import binllm.kernels.torch_ops`` registers, in the ``binllm`` namespace:

=========================================================  ===============================================
op                                                         result
=========================================================  ===============================================
``binllm::pack_signs(Tensor x) -> Tensor``                 uint8 (n, ceil(d/8)), bit = x >= 0
``binllm::unpack_signs(Tensor codes, int d, str dtype)``   +-1 (n, d) in `dtype`
``binllm::dot_all(Tensor a, Tensor b, int d, str out_dtype)``      int32/int16 (n, m) +-1 inner products
``binllm::hamming_all(Tensor a, Tensor b, int d, str out_dtype)``  int32/int16 (n, m) Hamming distances
``binllm::topk(Tensor q, Tensor items, int d, int k)``     (int32 (n, k) scores, int64 (n, k) indices)
``binllm::sign_ste(Tensor x, bool clip) -> Tensor``        +-1 in x's dtype, straight-through gradient
=========================================================  ===============================================

The kernels (every op but ``sign_ste``) call binllm's public functions
(:mod:`binllm.kernels.codes`): CPU tensors go to the C++ core as zero-copy numpy views,
CUDA tensors to the CUDA backend, so results equal the eager functions bit for
bit and bad input raises the same errors. Each op has a fake (meta) kernel that
gives output shapes and dtypes (symbolic sizes included) and rejects bad dtypes,
shapes and arguments with the error type and argument name of the eager check,
so the ops run inside ``torch.compile(fullgraph=True)`` and ``torch.export``
without graph breaks and fail at trace time on bad metadata; checks that need
the data (NaN, tail bits) run when the kernel runs.

Cost: each call goes through ``custom_op``'s Python autograd and dispatch
layers, tens of microseconds more than the direct call (bench/bench_torch_ops.py),
and the first call in a process imports ``torch._dynamo`` (custom_op wraps
kernels in ``torch._dynamo.disable``): one to a few seconds. For small inputs
in eager code the functions of :mod:`binllm` are cheaper; inside compiled or
exported models these ops are the way in.

``sign_ste`` is written in torch ops (any device) with its backward registered
through ``torch.library.register_autograd``: forward +1 where x >= 0 (both
zeros give +1, as ``csrc/core/bits.h``), -1 elsewhere (NaN gives -1, as
:class:`binllm.cf.hashing.SignSTE`); backward passes the gradient unchanged, or
only where |x| <= 1 with ``clip=True``.

Use the Python functions of this module (they check that inputs are tensors and
fill in defaults) or the ops themselves as ``torch.ops.binllm.<name>``. This
module imports torch; ``import binllm`` does not import it.
"""
from __future__ import annotations

from typing import cast

import torch

from binllm._types import OutDtype, UnpackDtype
from binllm.kernels import eager
from binllm.kernels.arrays import whole as _whole

__all__ = ["dot_all", "hamming_all", "pack_signs", "sign_ste", "topk", "unpack_signs"]

_PACK_DTYPES_CPU = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PACK_DTYPES_CUDA = (torch.float16, torch.bfloat16, torch.float32)
_UNPACK = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "int8": torch.int8}
_OUT = {"int32": torch.int32, "int16": torch.int16}


# ------------------------------------------------------------ metadata checks
# Used by the fake kernels: they see only shapes, dtypes and devices, and raise
# the error (type and wording) the eager function would raise for that input.


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')} {tuple(int(s) for s in t.shape)}"


def _check_d(d: int) -> None:
    if d < 1:
        raise ValueError(f"d must be a positive number of dimensions; got {d}")


def _check_codes(name: str, c: torch.Tensor, d: int) -> None:
    _check_d(d)
    nb = (d + 7) // 8
    if c.dtype != torch.uint8 or c.dim() != 2:
        raise TypeError(f"{name} must be a 2-D uint8 array of packed codes (n, {nb}); got {_describe(c)}")
    if c.shape[1] != nb:
        raise ValueError(f"{name} has {c.shape[1]} bytes per row but d={d} needs {nb}")
    if c.device.type == "cpu" and c.shape[0] > 0 and nb > 1 and c.stride(1) != 1:
        raise ValueError(f"{name} must have contiguous bytes within a row (use numpy.ascontiguousarray)")


def _check_same_device(**tensors: torch.Tensor) -> None:
    if len({t.device for t in tensors.values()}) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
        raise ValueError(f"inputs must be on one device; got {listing}")


def _check_out_dtype(out_dtype: str, d: int) -> torch.dtype:
    if out_dtype not in _OUT:
        raise ValueError(f"out_dtype must be 'int32' or 'int16'; got {out_dtype!r}")
    if out_dtype == "int16" and d > 32767:
        raise ValueError(f"out_dtype='int16' needs d <= 32767; got d={d}")
    return _OUT[out_dtype]


def _require_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor (binllm.kernels.torch_ops works on tensors; the functions in "
                        f"binllm take numpy arrays too); got {type(x).__name__}")
    return x


# ------------------------------------------------------------------ pack_signs


@torch.library.custom_op("binllm::pack_signs", mutates_args=(), device_types=("cpu", "cuda"))
def _pack_signs(x: torch.Tensor) -> torch.Tensor:
    return eager.pack_signs(x)


@_pack_signs.register_fake
def _pack_signs_fake(x: torch.Tensor) -> torch.Tensor:
    allowed = _PACK_DTYPES_CPU if x.device.type == "cpu" else _PACK_DTYPES_CUDA
    names = "/".join(str(t).replace("torch.", "") for t in allowed)
    if x.dtype not in allowed or x.dim() != 2:
        raise TypeError(f"x must be a 2-D {names} tensor (n, d); got {_describe(x)}")
    if x.shape[1] < 1:
        raise ValueError(f"x must have at least one column (d >= 1); got {tuple(x.shape)}")
    return x.new_empty((x.shape[0], (x.shape[1] + 7) // 8), dtype=torch.uint8)


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Packs signs into codes (op ``binllm::pack_signs``).

    Args:
        x: float16/bfloat16/float32/float64 (float64 on the CPU only) tensor (n, d), any strides.
    Returns:
        uint8 (n, ceil(d/8)) on x's device; bit = 1 iff x >= 0. NaN raises ValueError naming row and column.
    """
    return torch.ops.binllm.pack_signs.default(_require_tensor("x", x))


# ---------------------------------------------------------------- unpack_signs


@torch.library.custom_op("binllm::unpack_signs", mutates_args=(), device_types=("cpu", "cuda"))
def _unpack_signs(codes: torch.Tensor, d: int, dtype: str) -> torch.Tensor:
    return eager.unpack_signs(codes, d, cast(UnpackDtype, dtype))  # str in the op schema


@_unpack_signs.register_fake
def _unpack_signs_fake(codes: torch.Tensor, d: int, dtype: str) -> torch.Tensor:
    if dtype not in _UNPACK:
        raise ValueError(f"dtype must be one of {', '.join(_UNPACK)}; got {dtype!r}")
    _check_codes("codes", codes, d)
    return codes.new_empty((codes.shape[0], d), dtype=_UNPACK[dtype])


def unpack_signs(codes: torch.Tensor, d: int, dtype: str | torch.dtype = "float32") -> torch.Tensor:
    """Unpacks codes to +-1 (op ``binllm::unpack_signs``).

    Args:
        codes: uint8 (n, ceil(d/8)); d: dimensions; dtype: 'float32', 'float64' (CPU), 'float16', 'bfloat16',
            'int8', or the torch dtype of one of them (``torch.float32``).
    Returns:
        (n, d) tensor of +1/-1 in `dtype` on codes' device.
    Raises:
        TypeError: `dtype` is neither one of those names nor one of those torch dtypes; `d` is not an integer.
    """
    if isinstance(dtype, torch.dtype):
        names = {t: n for n, t in _UNPACK.items()}
        if dtype not in names:
            raise TypeError(f"dtype must be one of {', '.join(_UNPACK)} or their torch dtypes; got {dtype}")
        dtype = names[dtype]
    elif not isinstance(dtype, str):
        raise TypeError(f"dtype must be one of {', '.join(_UNPACK)} or their torch dtypes; got "
                        f"{type(dtype).__name__} {dtype!r}")
    return torch.ops.binllm.unpack_signs.default(_require_tensor("codes", codes), _whole("d", d), dtype)


# --------------------------------------------------------- dot_all / hamming_all


@torch.library.custom_op("binllm::dot_all", mutates_args=(), device_types=("cpu", "cuda"))
def _dot_all(a: torch.Tensor, b: torch.Tensor, d: int, out_dtype: str) -> torch.Tensor:
    return eager.dot_all(a, b, d, cast(OutDtype, out_dtype))  # str in the op schema


@torch.library.custom_op("binllm::hamming_all", mutates_args=(), device_types=("cpu", "cuda"))
def _hamming_all(a: torch.Tensor, b: torch.Tensor, d: int, out_dtype: str) -> torch.Tensor:
    return eager.hamming_all(a, b, d, cast(OutDtype, out_dtype))  # str in the op schema


def _all_fake(a: torch.Tensor, b: torch.Tensor, d: int, out_dtype: str) -> torch.Tensor:
    _check_same_device(a=a, b=b)
    _check_codes("a", a, d)
    _check_codes("b", b, d)
    dtype = _check_out_dtype(out_dtype, d)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=dtype)


_dot_all.register_fake(_all_fake)
_hamming_all.register_fake(_all_fake)


def dot_all(a: torch.Tensor, b: torch.Tensor, d: int, out_dtype: str = "int32") -> torch.Tensor:
    """+-1 inner products of all pairs (op ``binllm::dot_all``).

    Args:
        a: uint8 (n, ceil(d/8)); b: uint8 (m, ceil(d/8)), same device; d: dimensions;
        out_dtype: 'int32' or 'int16' (d <= 32767).
    Returns:
        (n, m) tensor of `out_dtype`, entries in [-d, d]. (No ``out=``: custom ops here do not mutate.)
    """
    return torch.ops.binllm.dot_all.default(_require_tensor("a", a), _require_tensor("b", b), _whole("d", d), out_dtype)


def hamming_all(a: torch.Tensor, b: torch.Tensor, d: int, out_dtype: str = "int32") -> torch.Tensor:
    """Hamming distances of all pairs (op ``binllm::hamming_all``): (n, m) `out_dtype` in [0, d]; args as dot_all."""
    return torch.ops.binllm.hamming_all.default(_require_tensor("a", a), _require_tensor("b", b), _whole("d", d),
                                                out_dtype)


# ------------------------------------------------------------------------ topk


@torch.library.custom_op("binllm::topk", mutates_args=(), device_types=("cpu", "cuda"))
def _topk(queries: torch.Tensor, items: torch.Tensor, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return eager.topk(queries, items, d, k)


@_topk.register_fake
def _topk_fake(queries: torch.Tensor, items: torch.Tensor, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check_same_device(queries=queries, items=items)
    _check_codes("queries", queries, d)
    _check_codes("items", items, d)
    if d > 65535:
        raise ValueError(f"d must be <= 65535 for topk; got {d}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if k > items.shape[0]:
        raise ValueError(f"k must be <= the number of items ({items.shape[0]}); got k={k}")
    n = queries.shape[0]
    return queries.new_empty((n, k), dtype=torch.int32), queries.new_empty((n, k), dtype=torch.int64)


def topk(queries: torch.Tensor, items: torch.Tensor, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k items with the largest +-1 inner product per query (op ``binllm::topk``).

    Args:
        queries: uint8 (n, ceil(d/8)); items: uint8 (m, ceil(d/8)); 1 <= k <= m; d <= 65535.
    Returns:
        (scores int32 (n, k), indices int64 (n, k)), best first, ties to the lower item index.
    """
    return torch.ops.binllm.topk.default(_require_tensor("queries", queries), _require_tensor("items", items),
                                         _whole("d", d), _whole("k", k))


# -------------------------------------------------------------------- sign_ste


@torch.library.custom_op("binllm::sign_ste", mutates_args=())
def _sign_ste(x: torch.Tensor, clip: bool) -> torch.Tensor:
    # One comparison and one fused multiply-add; exact in every float dtype.
    return (x >= 0).to(x.dtype) * 2 - 1


@_sign_ste.register_fake
def _sign_ste_fake(x: torch.Tensor, clip: bool) -> torch.Tensor:
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor; got {_describe(x)}")
    return torch.empty_like(x)


def _sign_ste_setup(ctx, inputs: tuple[torch.Tensor, bool], output: torch.Tensor) -> None:
    x, clip = inputs
    ctx.clip = clip
    if clip:
        ctx.save_for_backward(x)


def _sign_ste_backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
    if ctx.clip:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype), None
    return grad, None


_sign_ste.register_autograd(_sign_ste_backward, setup_context=_sign_ste_setup)


def sign_ste(x: torch.Tensor, clip: bool = False) -> torch.Tensor:
    """Straight-through sign (op ``binllm::sign_ste``), a drop-in for :func:`binllm.cf.hashing.sign_ste`.

    Args:
        x: floating-point tensor of any shape and device.
        clip: False: gradient passes unchanged (the reference); True: only where |x| <= 1.
    Returns:
        Tensor like x of +1 (x >= 0, both zeros) and -1 (x < 0 or NaN).
    """
    x = _require_tensor("x", x)
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor; got {_describe(x)}")
    return torch.ops.binllm.sign_ste.default(x, clip)
