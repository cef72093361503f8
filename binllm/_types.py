"""Type aliases shared by the wrappers (codes, textcodes, the backends) and the stub of the C++ core.

Only for type checkers and readers: nothing here is checked at run time (the C++ core and the
backends validate every argument). torch is imported only while type checking, so importing this
module stays as light as ``import binllm``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

#: numpy in -> numpy out, torch in -> torch out (CPU tensors share memory with numpy; CUDA stays on CUDA).
ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")

#: Score of a pair of codes: +-1 inner product ('dot') or Hamming distance ('hamming').
ScoreKind = Literal["dot", "hamming"]
#: Element type of all-pairs score matrices ('int16' needs d <= 32767).
OutDtype = Literal["int32", "int16"]
#: Element type of unpacked codes ('bfloat16' for torch tensors only).
UnpackDtype = Literal["float32", "float64", "float16", "bfloat16", "int8"]
#: What the C++ core's unpack writes: the +-1 types above, or 0/1 bits.
CoreUnpackDtype = Literal["float32", "float64", "float16", "bfloat16", "int8", "bits"]
#: Container of formatted codes: list of str, fixed-width numpy bytes array, or (buffer, offsets).
TextOut = Literal["list", "array", "buffer"]
#: Text style of codes: bit strings or dotted decimal.
TextStyle = Literal["bits", "dotted"]

#: Formatted codes for ``out='buffer'``: uint8 bytes and int64 (n+1,) offsets.
TextBuffer = tuple[np.ndarray, np.ndarray]
#: Any of the three formatted-codes containers.
Texts = list[str] | np.ndarray | TextBuffer
