"""binllm: BinLLM — text-like binary encoding of collaborative information for
LLM recommenders, with a C++ core for packed binary codes.

``import binllm`` loads only numpy and the C++ core; torch, pandas and
transformers are imported by the modules that need them.
"""
from ._backend import build_info, set_backend
from ._core import __version__, num_threads, set_num_threads
from .codes import (
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
from .textcodes import format_codes, from_bits, from_dotted, to_bits, to_dotted


def set_cpu_variant(name: str) -> None:
    """Forces a CPU kernel variant ('generic', 'avx2', 'avx512') for tests and benchmarks."""
    from . import _core

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
    "set_backend",
    "set_cpu_variant",
    "set_num_threads",
    "to_bits",
    "to_dotted",
    "topk",
    "unpack_bits",
    "unpack_signs",
]
