"""The one place where an operation picks its backend.

numpy arrays and CPU torch tensors go to the C++ CPU core (``binllm._core``);
CUDA tensors go to the CUDA backend (``binllm._cuda_backend`` over the
``binllm._cuda_ext`` kernels) when it was built.
Nothing is ever moved between devices silently. torch is never imported here:
tensors are recognised by duck typing so that ``import binllm`` stays light.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _core

_FORCED: str | None = os.environ.get("BINLLM_BACKEND") or None


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "device")


def device_of(name: str, x: Any) -> str:
    """'cpu' for numpy arrays and CPU tensors, else the tensor's device string."""
    if is_torch(x):
        return "cpu" if x.device.type == "cpu" else str(x.device)
    return "cpu"


def common_device(**arrays: Any) -> str:
    devices = {name: device_of(name, x) for name, x in arrays.items()}
    found = set(devices.values())
    if len(found) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"inputs must be on one device; got {listing}")
    return found.pop() if found else "cpu"


def set_backend(name: str | None) -> None:
    """Force 'cpu' or 'cuda' for tests and benchmarks (None: by the inputs' device)."""
    global _FORCED
    if name not in (None, "cpu", "cuda"):
        raise ValueError(f"name must be None, 'cpu' or 'cuda'; got {name!r}")
    _FORCED = name


def cuda_module():
    try:
        from . import _cuda_backend
    except ImportError as e:
        raise RuntimeError(
            "this binllm build has no CUDA backend, so CUDA tensors cannot be used; reinstall on a machine "
            "with nvcc (pip install --no-binary binllm binllm, or CMAKE_ARGS='-DBINLLM_CUDA=ON' pip install .), "
            "or move the tensors to the CPU yourself with .cpu()"
        ) from e
    return _cuda_backend


def backend_for(**arrays: Any) -> str:
    """'cpu' or 'cuda' for these inputs; raises if they sit on different devices."""
    dev = common_device(**arrays)
    want = "cpu" if dev == "cpu" else "cuda"
    if _FORCED is not None and _FORCED != want:
        raise ValueError(f"backend forced to {_FORCED!r} but the inputs are on {dev}")
    return want


def host_view(name: str, x: Any) -> tuple[np.ndarray, bool]:
    """A numpy view of a numpy array or CPU tensor (no copy), and whether it is bfloat16 bits."""
    if is_torch(x):
        import torch

        t = x.detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy(), True
        return t.numpy(), False
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


def build_info() -> dict:
    """Version, compiler and CPU variants of the core, and whether CUDA was built."""
    try:
        cuda = cuda_module().build_info()
    except RuntimeError:
        cuda = None
    return {
        "version": _core.__version__,
        "compiler": _core.compiler_info(),
        "cpu_variants_compiled": list(_core.compiled_variants()),
        "cpu_variants_supported": list(_core.supported_variants()),
        "cpu_variant": _core.current_variant(),
        "threads": _core.num_threads(),
        "cuda": cuda,
    }
