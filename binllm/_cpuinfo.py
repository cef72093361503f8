"""The one reader of ``/proc/cpuinfo``: the CPU's feature flags and model name.

A leaf with no binllm import, so the LLM layer (``dtype='auto'`` picks bf16 on CPUs whose flags
name a hardware bf16 product), the benchmarks' machine facts, the tests and tools/build_wheel.py
(which loads this file by path, before the package is built) all read the file the same way.
The flags are those of the first processor (the kernel clears flags the OS disabled); an absent
or unreadable file gives no flags and an empty model.
"""
from __future__ import annotations

import functools

PATH = "/proc/cpuinfo"


def parse(text: str) -> tuple[frozenset[str], str]:
    """(flags, model name) of the first processor in /proc/cpuinfo `text`; empty where a line is missing."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (the contents of {PATH}); got {type(text).__name__}")
    flags: frozenset[str] | None = None
    model: str | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and flags is None:
            flags = frozenset(value.split())
        elif key == "model name" and model is None:
            model = value.strip()
        if flags is not None and model is not None:
            break
    return flags or frozenset(), model or ""


@functools.cache  # the CPU does not change while the process runs
def _read() -> tuple[frozenset[str], str]:
    try:
        with open(PATH, encoding="ascii", errors="replace") as f:
            return parse(f.read())
    except OSError:
        return frozenset(), ""


def flags() -> frozenset[str]:
    """This CPU's flags (empty where /proc/cpuinfo cannot be read)."""
    return _read()[0]


def model() -> str:
    """This CPU's model name ('' where /proc/cpuinfo has none)."""
    return _read()[1]
