"""The one place where an operation picks its backend.

numpy arrays and CPU torch tensors go to the C++ CPU core (``binllm._core``);
CUDA tensors go to the CUDA backend (``binllm.kernels.cuda`` over the
``binllm._cuda_ext`` kernels) when it was built.
Tensors on any other device (meta, mps, xla, ...) are rejected with a
ValueError naming the argument. Nothing is ever moved between devices
silently. torch is never imported here: tensors are recognised by duck typing
so that ``import binllm`` stays light.

``impl(**inputs)`` returns the backend module for the inputs, ``binllm.kernels.cpu`` or
``binllm.kernels.cuda``: the same functions with the same signatures (bitsandbytes' shape: one op,
per-device implementations, one table), so the public functions in ``binllm.kernels.codes`` are one line each.

``require_backend`` (tests, benchmarks) and ``BINLLM_BACKEND`` ('cpu' or 'cuda') require that
backend: inputs on the other device raise ValueError instead of running there. Any other value of
BINLLM_BACKEND is ignored with a RuntimeWarning at import and listed in ``build_info()['problems']``
(the same policy as BINLLM_NUM_THREADS and BINLLM_CPU_VARIANT, see ``binllm``).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypedDict, TypeVar

from binllm import _core
from binllm.kernels import cpu as _cpu_backend
from binllm.kernels.arrays import BACKENDS, common_device

T = TypeVar("T")


def _env_backend() -> tuple[str | None, str | None]:
    """The backend BINLLM_BACKEND requires (or None), and the problem with its value (or None)."""
    value = os.environ.get("BINLLM_BACKEND", "")
    if value == "" or value in BACKENDS:
        return (value or None), None
    return None, f"BINLLM_BACKEND={value!r} ignored (expected 'cpu' or 'cuda'); choosing the backend by device"


_REQUIRED, _BACKEND_PROBLEM = _env_backend()


def config_problems() -> list[str]:
    """Problems with the BINLLM_* environment variables (each names the variable and the fallback used)."""
    from binllm import threads  # stdlib only at import; the stage-thread variables are parsed there

    problems = list(_core.config_problems())
    if _BACKEND_PROBLEM:
        problems.append(_BACKEND_PROBLEM)
    return problems + threads.env_problems()


def warn_config_problems() -> None:
    for p in config_problems():
        warnings.warn(p, RuntimeWarning, stacklevel=3)


def require_backend(name: str | None) -> None:
    """Requires 'cpu' or 'cuda' for every following call (None: by the inputs' device), for tests and benchmarks.

    Inputs are never moved between devices: a call whose inputs sit on the other device raises
    ValueError (so a benchmark that means to time the CUDA kernels cannot silently time the CPU)."""
    global _REQUIRED
    if name not in (None, "cpu", "cuda"):
        raise ValueError(f"name must be None, 'cpu' or 'cuda'; got {name!r}")
    _REQUIRED = name


def set_backend(name: str | None) -> None:
    """Deprecated alias of :func:`require_backend` (it never forced a backend, it requires one)."""
    warnings.warn("binllm.set_backend is deprecated; use binllm.require_backend (same behaviour)",
                  DeprecationWarning, stacklevel=2)
    require_backend(name)


def cuda_module() -> ModuleType:
    """``binllm.kernels.cuda``; RuntimeError with what to do when this build has no CUDA module."""
    try:
        from binllm.kernels import cuda as _cuda_backend
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
    if _REQUIRED is not None and _REQUIRED != want:
        raise ValueError(f"backend {_REQUIRED!r} required (require_backend or BINLLM_BACKEND) but the inputs "
                         f"are on {dev}")
    return want


def impl(**arrays: Any) -> ModuleType:
    """The backend module for these named inputs: ``_cpu_backend`` or ``_cuda_backend``.

    The one dispatch point: both modules offer pack_signs, unpack, score_pairs, score_all and
    topk with the same signatures. Raises ValueError when the inputs sit on different devices (or
    not on the required backend) and RuntimeError for CUDA inputs without a CUDA build."""
    return cuda_module() if backend_for(**arrays) == "cuda" else _cpu_backend


class BuildInfo(TypedDict):
    """What :func:`build_info` reports; None where a value could not be determined (see `problems`)."""

    version: str
    compiler: str | None
    cpu_variants_compiled: list[str] | None
    cpu_variants_supported: list[str] | None
    cpu_variant: str | None
    threads: int | None
    cuda: dict[str, int | str] | None
    problems: list[str]


def build_info() -> BuildInfo:
    """Version, compiler and CPU variants of the core, whether CUDA was built, and configuration problems.

    Never raises: whatever cannot be determined is None and explained in 'problems' (a list of str,
    empty when all is well), so ``binllm doctor`` can show it."""
    problems: list[str] = []

    def get(what: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (diagnostics must report, not raise)
            problems.append(f"{what}: {type(e).__name__}: {e}")
            return None

    cuda: dict[str, int | str] | None
    try:
        # The extension itself, not the torch-based backend: diagnostics (binllm doctor) must not import torch.
        if importlib.util.find_spec("binllm._cuda_ext"):
            cuda = importlib.import_module("binllm._cuda_ext").build_info()
        else:
            cuda = None
    except Exception as e:  # noqa: BLE001  (a broken CUDA module is a problem to report)
        cuda = None
        problems.append(f"CUDA module: {type(e).__name__}: {e}")
    info: BuildInfo = {
        "version": _core.__version__,
        "compiler": get("compiler", _core.compiler_info),
        "cpu_variants_compiled": get("compiled variants", lambda: list(_core.compiled_variants())),
        "cpu_variants_supported": get("supported variants", lambda: list(_core.supported_variants())),
        "cpu_variant": get("CPU variant", _core.current_variant),
        "threads": get("threads", _core.num_threads),
        "cuda": cuda,
        "problems": [],
    }
    info["problems"] = (get("configuration", config_problems) or []) + problems
    return info
