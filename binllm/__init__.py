"""binllm: BinLLM — text-like binary encoding of collaborative information for
LLM recommenders, with a C++ core for packed binary codes.

``import binllm`` loads only numpy and the C++ core; torch, pandas and
transformers are imported by the modules that need them.

Environment variables, parsed strictly (the whole value, no spaces, exact case):

* ``BINLLM_NUM_THREADS``: threads per kernel call, a whole number from 1 to
  4 x the hardware threads (larger values are capped);
* ``BINLLM_CPU_VARIANT``: 'generic', 'avx2' or 'avx512', which this CPU must support;
* ``BINLLM_BACKEND``: 'cpu' or 'cuda', required for every call.

An invalid value never stops ``import binllm`` and never breaks a kernel
call: it is ignored with a RuntimeWarning at import that names the variable
and the fallback in use (the default thread count, the best supported
variant, backend by device), and ``build_info()['problems']`` (shown by
``binllm doctor``) lists it.
"""
from binllm import _moved
from binllm._core import __version__, num_threads, set_num_threads
from binllm.kernels.codes import (
    balance,
    dot_all,
    dot_rows,
    hamming_all,
    hamming_rows,
    pack_signs,
    topk,
    unpack_bits,
    unpack_signs,
)
from binllm.kernels.dispatch import build_info, require_backend, set_backend, warn_config_problems
from binllm.kernels.textcodes import format_codes, from_bits, from_dotted, to_bits, to_dotted

warn_config_problems()
_moved.install()  # binllm.stages, binllm.tuning, ... of 0.2 still import (with a DeprecationWarning)


def set_cpu_variant(name: str) -> None:
    """Forces a CPU kernel variant ('generic', 'avx2', 'avx512') for tests and benchmarks."""
    from binllm import _core

    _core.set_variant(name)


__all__ = [
    "__version__",
    "balance",
    "build_info",
    "dot_all",
    "dot_rows",
    "format_codes",
    "from_bits",
    "from_dotted",
    "hamming_all",
    "hamming_rows",
    "num_threads",
    "pack_signs",
    "require_backend",
    "set_backend",
    "set_cpu_variant",
    "set_num_threads",
    "to_bits",
    "to_dotted",
    "topk",
    "unpack_bits",
    "unpack_signs",
]
