"""The one place where an operation picks its backend.

numpy arrays and CPU torch tensors go to the C++ CPU core (``binllm._core``);
CUDA tensors go to the CUDA backend (``binllm._cuda_backend`` over the
``binllm._cuda_ext`` kernels) when it was built.
Tensors on any other device (meta, mps, xla, ...) are rejected with a
ValueError naming the argument. Nothing is ever moved between devices
silently. torch is never imported here: tensors are recognised by duck typing
so that ``import binllm`` stays light.

``impl(**inputs)`` returns the backend module for the inputs, ``binllm._cpu_backend`` or
``binllm._cuda_backend``: the same functions with the same signatures (bitsandbytes' shape: one op,
per-device implementations, one table), so the public functions in ``binllm.codes`` are one line each.

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
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import numpy as np

from . import _core, _cpu_backend

if TYPE_CHECKING:  # type names only; torch is never imported at run time here
    from typing import TypeGuard

    import torch

_BACKENDS = ("cpu", "cuda")
T = TypeVar("T")


def _env_backend() -> tuple[str | None, str | None]:
    """The backend BINLLM_BACKEND requires (or None), and the problem with its value (or None)."""
    value = os.environ.get("BINLLM_BACKEND", "")
    if value == "" or value in _BACKENDS:
        return (value or None), None
    return None, f"BINLLM_BACKEND={value!r} ignored (expected 'cpu' or 'cuda'); choosing the backend by device"


_REQUIRED, _BACKEND_PROBLEM = _env_backend()


def config_problems() -> list[str]:
    """Problems with the BINLLM_* environment variables (each names the variable and the fallback used)."""
    from . import threads  # stdlib only at import; the stage-thread variables are parsed there

    problems = list(_core.config_problems())
    if _BACKEND_PROBLEM:
        problems.append(_BACKEND_PROBLEM)
    return problems + threads.env_problems()


def _warn_config_problems() -> None:
    for p in config_problems():
        warnings.warn(p, RuntimeWarning, stacklevel=3)


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
        if kind not in _BACKENDS:
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
    """``binllm._cuda_backend``; RuntimeError with what to do when this build has no CUDA module."""
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
        if importlib.util.find_spec(f"{__package__}._cuda_ext"):
            cuda = importlib.import_module(f"{__package__}._cuda_ext").build_info()
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
