"""Recommendation lists from a finished ``binllm run`` folder: the :class:`Recommender` (candidate
retrieval, :mod:`binllm.lists.candidates`, then optional LLM re-ranking, :mod:`binllm.lists.rerank`)
and :func:`recommend`, which writes the lists of a run (:mod:`binllm.lists.output`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from binllm.lists import folder
from binllm.lists.candidates import Candidates, RecLists, check_nk
from binllm.lists.output import FORMATS, write_lists
from binllm.lists.rerank import RERANK_METHODS, Reranker
from binllm.progress import log

#: Which code book 'codes' retrieval uses: 'auto' (the retrieval code book when the run has one, else the
#: prompt code book), 'retrieval' (required) or 'prompt'.
CODEBOOK_CHOICES = ("auto", "retrieval", "prompt")


class Recommender:
    """Retrieval and re-ranking over a finished run folder: one :class:`Candidates` for the run's
    dataset and code books, and one :class:`Reranker` per tuned adapter, loaded when first used.

    Args:
        run_dir: the output folder of ``binllm run``.
        include_valid: also exclude (and use as prompt history) the valid split's interactions,
            besides train's.
        device, dtype: for the LLM ('auto': CUDA + bf16 when there is a GPU, else the CPU's best dtype).
        batch_size: suffixes per forward pass when re-ranking.
        progress: progress bars.
        codes: the code book of 'codes' retrieval, one of :data:`CODEBOOK_CHOICES`.
    """

    def __init__(self, run_dir: str | os.PathLike, include_valid: bool = False, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, progress: bool = True, codes: str = "auto"):
        from binllm import data

        run = Path(run_dir)
        if not run.is_dir():
            raise ValueError(f"run_dir {run_dir} is not a folder (give the output folder of `binllm run`)")
        data_dir = folder.run_data_dir(run)
        if not (data_dir / "meta.json").is_file():
            raise ValueError(f"run_dir {run_dir} has no prepared dataset ({data_dir}/meta.json); is it a `binllm run` "
                             "folder?")
        cb_path = run / folder.PROMPT_CODEBOOK
        if not cb_path.is_file():
            raise ValueError(f"run_dir {run_dir} has no code book ({cb_path}); run `binllm run` or `binllm pretrain`")
        self.run_dir, self.include_valid = run, include_valid
        self.device, self.dtype, self.batch_size, self.progress = device, dtype, batch_size, progress
        self.prep = data.load_prepared(data_dir)
        if codes not in CODEBOOK_CHOICES:
            raise ValueError(f"codes must be one of {CODEBOOK_CHOICES}; got {codes!r}")
        #: the prompt code book (BinMF codes; the BinLLM adapter's prompts carry them)
        self.codebook = folder.load_codebook(cb_path, self.prep, run_dir)
        r_path = run / folder.RETRIEVAL_CODEBOOK
        if codes == "retrieval" and not r_path.is_file():
            raise ValueError(f"codes='retrieval': run_dir {run_dir} has no retrieval code book ({r_path}); train it "
                             "with `binllm run` (or `binllm pretrain --retrieval-objective softmax`)")
        use_retrieval = codes != "prompt" and r_path.is_file()
        #: the code book of 'codes' retrieval, and which one it is ('retrieval' or 'prompt')
        self.retrieval_codebook = folder.load_codebook(r_path, self.prep, run_dir) if use_retrieval else self.codebook
        self.codes_source = "retrieval" if use_retrieval else "prompt"
        if codes == "auto" and not use_retrieval and progress:
            log(f"recommend: {run_dir} has no retrieval code book ({folder.RETRIEVAL_CODEBOOK}); retrieving with "
                "the prompt code book. `binllm run` on the folder trains the retrieval codes, keeping everything else.")
        self.candidates = Candidates(self.prep, self.codebook, self.retrieval_codebook, self.codes_source,
                                     include_valid, run)
        self._rerankers: dict[str, Reranker] = {}

    @property
    def popularity(self) -> np.ndarray:
        """Train positives of each catalogue item: the popularity list and the tie order of code scores."""
        return self.candidates.popularity

    @property
    def n_items(self) -> int:
        """Catalogue size (item slots 1..; 0 is padding)."""
        return self.candidates.n_items

    # the jobs, each in its own class

    def user_slots(self, users: Iterable[Any] | None) -> np.ndarray:
        """:meth:`Candidates.user_slots`: slots of raw user ids (None: every user)."""
        return self.candidates.user_slots(users)

    def exclusions(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Candidates.exclusions`: CSR of the excluded items of user slots."""
        return self.candidates.exclusions(slots)

    def history(self, slot: int, length: int) -> np.ndarray:
        """:meth:`Candidates.history`: the user's latest liked items of the known splits."""
        return self.candidates.history(slot, length)

    def retrieve(self, slots: np.ndarray, n: int, method: str = "codes") -> RecLists:
        """:meth:`Candidates.retrieve`: top-n items per user slot by one of its methods."""
        return self.candidates.retrieve(slots, n, method)

    def reranker(self, method: str) -> Reranker:
        """The :class:`Reranker` of `method` ('text' or 'binllm'), loaded once."""
        if method not in RERANK_METHODS:
            raise ValueError(f"rerank must be None or one of {RERANK_METHODS}; got {method!r}")
        if method not in self._rerankers:
            self._rerankers[method] = Reranker(self.run_dir, method, self.prep, self.codebook, self.device,
                                               self.dtype, self.batch_size, self.progress)
        return self._rerankers[method]

    def rerank(self, lists: RecLists, method: str, k: int, users_per_pass: int = 64) -> RecLists:
        """:meth:`Reranker.rerank` with the adapter of `method` and the users' known liked items."""
        return self.reranker(method).rerank(lists, k, self.candidates.history, users_per_pass)

    def recommend(self, users: Iterable[Any] | None = None, n: int = 50, k: int = 10,
                  rerank: str | None = None) -> RecLists:
        """Top-k lists: retrieval of n candidates, then (optionally) re-ranking."""
        check_nk(n, k)
        if rerank is not None and rerank not in RERANK_METHODS:
            raise ValueError(f"rerank must be None or one of {RERANK_METHODS}; got {rerank!r}")
        slots = self.user_slots(users)
        if rerank is not None:
            self.reranker(rerank)  # a missing adapter fails before retrieval work
        lists = self.retrieve(slots, n)
        if rerank is None:
            return RecLists(slots, lists.items[:, :k], lists.retrieval[:, :k], None, lists.backfilled)
        return self.rerank(lists, rerank, k)

    def write(self, lists: RecLists, out: str | os.PathLike, fmt: str = "jsonl") -> Path:
        """:func:`binllm.lists.output.write_lists` with this run's ids and titles."""
        return write_lists(lists, self.prep, out, fmt)


def recommend(run_dir: str | os.PathLike, out: str | os.PathLike, users: Sequence[Any] | None = None, n: int = 50,
              k: int = 10, rerank: str | None = None, fmt: str = "jsonl", include_valid: bool = False,
              progress: bool = True, device: str = "auto", dtype: str = "auto", codes: str = "auto") -> Path:
    """Writes top-k recommendation lists of a run folder to `out`; returns its path.

    Args:
        run_dir: the output folder of ``binllm run``.
        out: the output file (JSON lines or TSV), written atomically.
        users: raw user ids of the input data (None: every user).
        n: candidates retrieved per user by the packed codes (>= k).
        k: items per final list (>= 1).
        rerank: None (retrieval order), 'text' (text-only adapter) or 'binllm' (BinLLM adapter).
        fmt: 'jsonl' or 'tsv'.
        include_valid: also exclude the items rated in valid (and use them as prompt history).
        device, dtype: for the LLM.
        codes: the code book candidates come from (:data:`CODEBOOK_CHOICES`; 'auto': the run's
            retrieval code book, else its prompt code book).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    check_nk(n, k)
    from binllm.locks import hold

    with hold(out):  # one writer of `out` at a time (binllm.locks)
        rec = Recommender(run_dir, include_valid=include_valid, device=device, dtype=dtype, progress=progress,
                          codes=codes)
        return rec.write(rec.recommend(users, n, k, rerank), out, fmt)
