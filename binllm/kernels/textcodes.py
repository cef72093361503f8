"""Codes as text an LLM can read.

* bit strings: ``'0101...'``, one character per dimension, dimension 0 first;
* dotted decimal: every 8 dimensions one number 0-255 (first dimension = most
  significant bit) joined by ``'.'``; 32 bits look like an IPv4 address.

Formatting returns ``list[str]`` (``out='list'``), a fixed-width numpy bytes
array (``out='array'``, no Python object per row) or ``(buffer, offsets)``
(``out='buffer'``: uint8 bytes and int64 (n+1,) offsets). Parsing is strict
(right length, only valid characters, numbers 0-255 without leading zeros,
zero tail bits) and names the lowest bad row, whatever is wrong with it
(a lone surrogate in a str, a non-ASCII character in a numpy 'U' row, or a
malformed code). CUDA codes are copied to the host once
(they are small) and formatted by the CPU core.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, overload

import numpy as np

from binllm import _core
from binllm._types import ArrayT, TextBuffer, TextOut, Texts, TextStyle
from binllm.kernels import arrays

if TYPE_CHECKING:
    import torch


def _host_codes(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    if arrays.is_torch(codes) and arrays.device_of("codes", codes) != "cpu":
        codes = codes.detach().cpu()
    arr, _ = arrays.host_view("codes", codes)
    return arr


@overload
def to_bits(codes: ArrayT, d: int, out: Literal["list"] = ...) -> list[str]: ...
@overload
def to_bits(codes: ArrayT, d: int, out: Literal["array"]) -> np.ndarray: ...
@overload
def to_bits(codes: ArrayT, d: int, out: Literal["buffer"]) -> TextBuffer: ...
@overload
def to_bits(codes: ArrayT, d: int, out: TextOut) -> Texts: ...
def to_bits(codes: ArrayT, d: int, out: TextOut = "list") -> Texts:
    """Bit strings of packed codes (n, ceil(d/8)): d characters each."""
    return _core.format_bits(_host_codes(codes), arrays.whole("d", d), out)


@overload
def to_dotted(codes: ArrayT, d: int, out: Literal["list"] = ...) -> list[str]: ...
@overload
def to_dotted(codes: ArrayT, d: int, out: Literal["array"]) -> np.ndarray: ...
@overload
def to_dotted(codes: ArrayT, d: int, out: Literal["buffer"]) -> TextBuffer: ...
@overload
def to_dotted(codes: ArrayT, d: int, out: TextOut) -> Texts: ...
def to_dotted(codes: ArrayT, d: int, out: TextOut = "list") -> Texts:
    """Dotted-decimal strings of packed codes (n, ceil(d/8)): ceil(d/8) numbers each."""
    return _core.format_dotted(_host_codes(codes), arrays.whole("d", d), out)


def from_bits(texts: Sequence[str] | Sequence[bytes] | np.ndarray, d: int) -> np.ndarray:
    """Parses bit strings (list of str/bytes, or numpy 'S'/'U' array) into uint8 (n, ceil(d/8))."""
    return _core.parse_bits(texts, arrays.whole("d", d))


def from_dotted(texts: Sequence[str] | Sequence[bytes] | np.ndarray, d: int) -> np.ndarray:
    """Parses dotted-decimal strings into uint8 (n, ceil(d/8))."""
    return _core.parse_dotted(texts, arrays.whole("d", d))


@overload
def format_codes(codes: ArrayT, d: int, style: TextStyle, out: Literal["list"] = ...) -> list[str]: ...
@overload
def format_codes(codes: ArrayT, d: int, style: TextStyle, out: Literal["array"]) -> np.ndarray: ...
@overload
def format_codes(codes: ArrayT, d: int, style: TextStyle, out: Literal["buffer"]) -> TextBuffer: ...
@overload
def format_codes(codes: ArrayT, d: int, style: TextStyle, out: TextOut) -> Texts: ...
def format_codes(codes: ArrayT, d: int, style: TextStyle, out: TextOut = "list") -> Texts:
    """``to_bits`` for style 'bits', ``to_dotted`` for style 'dotted'."""
    if style == "bits":
        return to_bits(codes, d, out)
    if style == "dotted":
        return to_dotted(codes, d, out)
    raise ValueError(f"style must be 'bits' or 'dotted'; got {style!r}")
