"""The other libraries a suite times binllm against, and the rule that each
must first give binllm's result on the same data.

A peer is imported only if installed; a missing (or unimportable) one is
skipped with a note that the table prints. An installed peer whose result
differs from binllm's stops the suite with :class:`PeerMismatch`: a table
never times a route that computes something else.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np

#: name -> (module to import, pip package that provides it)
KNOWN: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "faiss": ("faiss", "faiss-cpu"),
    "numkong": ("numkong", "numkong"),
    "simsimd": ("simsimd", "simsimd"),
    "usearch": ("usearch.index", "usearch"),
}


class PeerMismatch(RuntimeError):
    """An installed peer computed something other than binllm on the same input."""


class Peers:
    """The installed peers among `names` (keys of KNOWN); `notes` says which were skipped and why."""

    def __init__(self, names: Sequence[str]):
        self.modules: dict[str, ModuleType] = {}
        self.notes: list[str] = []
        for name in names:
            module, pip = KNOWN[name]
            try:
                self.modules[name] = importlib.import_module(module)
            except ImportError as e:
                why = "not installed" if isinstance(e, ModuleNotFoundError) else f"not importable ({e})"
                self.notes.append(f"{name} {why} (pip install {pip}): its rows are left out")

    def get(self, name: str) -> ModuleType | None:
        """The peer's module, or None when it was skipped."""
        return self.modules.get(name)


def check_equal(peer: str, what: str, got: object, want: np.ndarray) -> None:
    """Raises PeerMismatch unless `got` (array-like) equals binllm's `want` in shape and every value."""
    g = np.asarray(got)
    if g.shape != want.shape:
        raise PeerMismatch(f"{peer} disagrees with binllm on {what}: shape {g.shape}, binllm {want.shape}")
    diff = g != want
    if diff.any():
        first = tuple(int(i) for i in np.argwhere(diff)[0])
        raise PeerMismatch(f"{peer} disagrees with binllm on {what}: {int(diff.sum())} of {diff.size} values "
                           f"differ, first at {first}: {g[first]!r} vs binllm {want[first]!r}")


def check_topk(peer: str, what: str, scores: object, indices: object, want_scores: np.ndarray, n_items: int,
               rescore: Callable[[np.ndarray], np.ndarray]) -> None:
    """Raises PeerMismatch unless a peer's top-k equals binllm's up to the order of ties: the same
    score lists (`want_scores`, best first), and each returned index (in ``[0, n_items)``) really
    has the score reported for it (``rescore(indices)``: binllm's score of each query with each of
    its returned items)."""
    s, i = np.asarray(scores), np.asarray(indices).astype(np.int64)
    check_equal(peer, what + " (top-k score lists)", s, want_scores)
    if i.shape != s.shape or (i < 0).any() or (i >= n_items).any():
        raise PeerMismatch(f"{peer} disagrees with binllm on {what}: indices of shape {i.shape} outside "
                           f"[0, {n_items})")
    check_equal(peer, what + " (the true scores of the returned indices)", s, rescore(i))
