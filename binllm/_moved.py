"""Module paths of binllm 0.2 that moved in 0.3, kept importable for one minor release.

``import binllm.stages`` (and every other old path below) gives the module at its new
path, the same object, so monkeypatching and ``isinstance`` behave as before, with a
DeprecationWarning naming the new path. ``binllm.torch_ops`` is a documented door and
stays without a warning. The old paths go in 0.4.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old path -> new path; the one list (tests/test_layers.py checks that each resolves)
MOVED = {
    "binllm.codes": "binllm.kernels.codes",
    "binllm.textcodes": "binllm.kernels.textcodes",
    "binllm.torch_ops": "binllm.kernels.torch_ops",
    "binllm.hashing": "binllm.cf.hashing",
    "binllm.codebook": "binllm.cf.codebook",
    "binllm.retrieval": "binllm.cf.retrieval",
    "binllm.anchors": "binllm.cf.anchors",
    "binllm.prompts": "binllm.llm.prompts",
    "binllm.scoring": "binllm.llm.scoring",
    "binllm.prefix_scoring": "binllm.llm.prefix_scoring",
    "binllm.tuning": "binllm.llm.tuning",
    "binllm.recommend": "binllm.lists",
    "binllm.stages": "binllm.run.stages",
    "binllm.pipeline": "binllm.run.pipeline",
}
STABLE = {"binllm.torch_ops"}  # old paths that stay, without a warning


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a placeholder: exec_module puts the real module in its place

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__
        if old not in STABLE:
            warnings.warn(f"{old} moved to {self.new}; import it from there ({old} goes in binllm 0.4)",
                          DeprecationWarning, stacklevel=2)  # warnings skips importlib's frames: 2 = the import line
        # the import system hands out sys.modules[old] after this call: the real module, not the placeholder
        sys.modules[old] = importlib.import_module(self.new)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Adds the finder once (binllm/__init__ calls it)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
