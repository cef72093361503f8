"""Array plumbing shared by the kernel modules: whole-number arguments, torch tensors recognised
without importing torch, their device, and zero-copy numpy views of CPU inputs and back.

A leaf of ``binllm.kernels``: it imports numpy only, so the dispatch (``dispatch``), both
backends (``cpu``, ``cuda``) and the torch ops can all use it without importing each other.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # type names only; torch is never imported at run time here
    from typing import TypeGuard

    import torch

BACKENDS = ("cpu", "cuda")  # the devices binllm runs on


def whole(name: str, v: object) -> int:
    """`v` as an int when it is a whole number (int, numpy integer); TypeError naming `name` otherwise.

    Checked here, before the C++ core, because pybind's own refusal of ``d=37.0`` is a multi-line
    "incompatible function arguments" listing, and it takes ``True`` as 1."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {type(v).__name__} {v!r}")
    return int(v)


def is_torch(x: object) -> TypeGuard[torch.Tensor]:
    """Whether x is a torch tensor (by duck typing: torch is never imported here)."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "device")


def device_of(name: str, x: Any) -> str:
    """'cpu' for numpy arrays and CPU tensors, the device string of CUDA tensors; others raise ValueError."""
    if is_torch(x):
        kind = x.device.type
        if kind not in BACKENDS:
            raise ValueError(f"{name} is on device {kind!r}; binllm runs on 'cpu' and 'cuda' tensors only "
                             f"(move it with .to('cpu'))")
        return "cpu" if kind == "cpu" else str(x.device)
    return "cpu"


def common_device(**arrays: Any) -> str:
    devices = {name: device_of(name, x) for name, x in arrays.items()}
    found = set(devices.values())
    if len(found) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"inputs must be on one device; got {listing}")
    return found.pop() if found else "cpu"


def host_view(name: str, x: Any) -> tuple[np.ndarray, bool]:
    """A numpy view of a numpy array or CPU tensor, and whether it is bfloat16 bits.

    No copy, except for torch's lazy negated/conjugated views, which are resolved first."""
    if is_torch(x):
        import torch

        device_of(name, x)
        t = x.detach()
        if t.is_neg() or t.is_conj():
            t = t.resolve_neg().resolve_conj()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy(), True
        try:
            return t.numpy(), False
        except (TypeError, RuntimeError, NotImplementedError) as e:
            raise TypeError(f"{name} has torch dtype {t.dtype}, which has no numpy equivalent; "
                            f"convert it (for example .float()) first") from e
    if isinstance(x, np.ndarray):
        return x, False
    raise TypeError(f"{name} must be a numpy array or a torch tensor; got {type(x).__name__}")


def like(out: np.ndarray, ref: Any, torch_dtype: Any = None) -> Any:
    """Returns `out` as the same kind of container as `ref` (torch in, torch out)."""
    if not is_torch(ref):
        return out
    import torch

    t = torch.from_numpy(out)
    return t.view(torch_dtype) if torch_dtype is not None else t
